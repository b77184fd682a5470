//! Starts real etcd members on loopback, for tests and benchmarks. Each member has its
//! own temporary data directory and is killed (and its directory removed) when dropped.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn etcd_binary() -> io::Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("etcd")).collect::<Vec<_>>())
        .unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin/etcd"))
        .chain(candidates)
        .find(|p| p.is_file())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "etcd is not installed (apt-get install etcd-server)"))
}

/// One running etcd member.
pub struct EtcdProcess {
    child: Option<Child>,
    dir: PathBuf,
    client_url: String,
    /// The cluster folder around `dir`, when this member was taken out of its cluster
    /// ([`EtcdProcess::start`]): removed after the member's own.
    base: Option<PathBuf>,
}

struct MemberPlan {
    name: String,
    client_port: u16,
    peer_port: u16,
}

impl EtcdProcess {
    /// Starts a single-member cluster and waits until it serves.
    pub fn start() -> io::Result<EtcdProcess> {
        let mut cluster = EtcdCluster::start(1)?;
        let mut member = cluster.members.pop().ok_or_else(|| io::Error::other("no member started"))?;
        // The folder goes with the member now: the cluster dropped here must not remove it
        // under a running etcd (which dies at its next new file: a WAL segment, a snapshot).
        member.base = cluster.base.take();
        Ok(member)
    }

    /// The client URL, e.g. `http://127.0.0.1:23790`.
    pub fn endpoint(&self) -> String {
        self.client_url.clone()
    }

    /// The member's process id while it runs (benchmarks read its memory and CPU in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the member with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(plan: &MemberPlan, initial_cluster: &str, token: &str, dir: PathBuf) -> io::Result<EtcdProcess> {
        std::fs::create_dir_all(&dir)?;
        let client_url = format!("http://127.0.0.1:{}", plan.client_port);
        let peer_url = format!("http://127.0.0.1:{}", plan.peer_port);
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = Command::new(etcd_binary()?)
            .arg(format!("--name={}", plan.name))
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-token={token}"))
            .arg("--initial-cluster-state=new")
            // Room for the store's largest value plus request overhead.
            .arg("--max-request-bytes=2097152")
            // etcd's backend quota defaults to 2 GiB, which the full-size scale bench fills
            // within one compaction window (every version of 150,000 pods written in
            // minutes; "mvcc: database space exceeded"); 8 GiB is the largest Kubernetes
            // recommends for big clusters.
            .arg("--quota-backend-bytes=8589934592")
            .arg("--experimental-watch-progress-notify-interval=5s")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(EtcdProcess { child: Some(child), dir, client_url, base: None })
    }

    /// Whether the member answers its health endpoint with `true`.
    fn healthy(&self) -> bool {
        let addr = self.client_url.trim_start_matches("http://");
        let Ok(mut conn) = TcpStream::connect(addr) else { return false };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if conn.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        conn.read_to_string(&mut body).is_ok() && body.contains("\"health\":\"true\"")
    }

    fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| c.try_wait().map(|s| s.is_some()).unwrap_or(true))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(base) = &self.base {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// A cluster of etcd members on loopback.
pub struct EtcdCluster {
    pub members: Vec<EtcdProcess>,
    /// The folder holding every member's; removed (once they are) when the cluster drops.
    base: Option<PathBuf>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy.
    pub fn start(n: usize) -> io::Result<EtcdCluster> {
        let id = format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let plans = (0..n)
            .map(|i| Ok(MemberPlan { name: format!("m{i}"), client_port: free_port()?, peer_port: free_port()? }))
            .collect::<io::Result<Vec<_>>>()?;
        let initial_cluster =
            plans.iter().map(|p| format!("{}=http://127.0.0.1:{}", p.name, p.peer_port)).collect::<Vec<_>>().join(",");
        let token = format!("atoll-test-{id}");
        let base = std::env::temp_dir().join(format!("atoll-etcd-{id}"));
        // Built before the members so that an early return drops (kills and removes) the ones
        // started so far and the folder around them.
        let mut cluster = EtcdCluster { members: Vec::new(), base: Some(base.clone()) };
        for plan in &plans {
            let dir = base.join(&plan.name);
            cluster.members.push(EtcdProcess::spawn(plan, &initial_cluster, &token, dir)?);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for member in &mut cluster.members {
            while !member.healthy() {
                if member.exited() {
                    return Err(io::Error::other(format!("etcd exited during start-up:\n{}", member.log_tail())));
                }
                if Instant::now() > deadline {
                    return Err(io::Error::other(format!(
                        "etcd did not become healthy within {START_TIMEOUT:?}:\n{}",
                        member.log_tail()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(cluster)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdProcess::endpoint).collect()
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            m.kill();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // Members first (each kills its etcd and removes its own folder), then theirs
        // (unless a member took it along).
        self.members.clear();
        if let Some(base) = &self.base {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_member_keeps_its_folder_while_it_runs_and_removes_it_after() {
        let member = EtcdProcess::start().expect("etcd must be installed for this test (apt-get install etcd-server)");
        let base = member.base.clone().expect("the member owns its cluster's folder");
        assert!(member.dir.starts_with(&base));
        assert!(member.dir.join("data").is_dir(), "the data folder of a running member is there");
        drop(member);
        assert!(!base.exists(), "the folder goes with the member");
    }
}
