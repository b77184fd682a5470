//! Pod networking behind one small trait, so tenant networks can replace it: a network
//! gives each pod sandbox a namespace to join and, usually, an address.
//!
//! - [`LoopbackOnly`]: a fresh network namespace per pod (made by the runtime) with only
//!   loopback up, and no pod IP.
//! - [`Bridge`]: the node's pod network: a Linux bridge (`atoll0`) holding the first
//!   address of the node's pod CIDR; per pod a named network namespace (`atoll-<pod>`)
//!   and a veth pair (host end on the bridge, `eth0` inside) with an address from an
//!   IPAM file (on the agent's tmpfs, like the runtime's records: what it names ends with
//!   a reboot), loopback up, default route via the bridge; outbound traffic is
//!   masqueraded by an nftables table of ours (`ip atoll-<bridge>`) with `ip_forward` on.
//!   The per-node part (bridge, NAT) runs `ip`, `nft` and `sysctl` through [`Os::run`]
//!   once; the per-pod part is a few netlink requests ([`Os::attach_pod_link`], no child
//!   processes), since it is on every pod's start-up path.
//!
//! The bridge keeps a pool of attachments made ahead ([`Bridge::start_pool`]): namespace,
//! veth pair on the bridge (host end down), address, routes, all under pool names
//! (`atoll-pool-<bridge>-<agent hash>-<n>`, `vp<hash>`, book key `pool-<n>`). A pod's set-up takes one
//! and renames it to the pod's names ([`Os::adopt_pod_link`]: a second bind mount of the
//! namespace, a link rename, the host end up): a new network namespace costs the kernel
//! tens of milliseconds under its global locks, so 16 pods set up at once queued behind
//! one another for 150-200 ms each. A thread refills the pool once no set-up has asked
//! for [`POOL_QUIET`]. The book is re-keyed (`pool-<n>` to the pod) before anything is
//! renamed, so after a crash the book still names everything that exists; the pool is a
//! cache and never outlives its agent: a starting bridge removes every `pool-*` entry
//! of the book and what it names, a stopping one ([`PodNetwork::shutdown`]) its own, so
//! no entry is leaked or handed out twice.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::netlink::NETNS_DIR;
use crate::os::{Os, PodLink};
use crate::runtime::NetworkMode;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("setting up the network of pod {pod}: {detail}")]
    Setup { pod: String, detail: String },
    #[error("invalid pod CIDR {0:?} (want an IPv4 a.b.c.d/n with n from 8 to 30)")]
    Cidr(String),
    #[error("no free address left in {0}")]
    Exhausted(String),
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error(transparent)]
    Os(#[from] crate::os::OsError),
    #[error("corrupt IPAM file {path}: {detail}")]
    CorruptState { path: PathBuf, detail: String },
}

/// A pod's place on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub mode: NetworkMode,
    /// The pod's IP, reported as `status.podIP`.
    pub ip: Option<String>,
}

pub trait PodNetwork: Send + Sync {
    /// Give pod `id` (its sandbox ID) a network; repeating it returns the same attachment.
    fn setup(&self, id: &str) -> Result<Attachment, NetError>;
    /// Release what `setup` made; absent is not an error.
    fn teardown(&self, id: &str) -> Result<(), NetError>;
    /// The attachment of a pod set up earlier (after an agent restart), if any.
    fn attachment(&self, id: &str) -> Option<Attachment>;
    /// Every pod ID with an attachment (set up, or begun), so that the agent's sweep finds
    /// one whose sandbox was never made (a crash in between) and tears it down.
    fn attached(&self) -> Vec<String> {
        Vec::new()
    }
    /// The agent is stopping: release what was made ahead of need (pods' attachments stay).
    fn shutdown(&self) {}
}

/// A network namespace of its own per pod, loopback only.
#[derive(Debug, Default)]
pub struct LoopbackOnly;

impl PodNetwork for LoopbackOnly {
    fn setup(&self, _id: &str) -> Result<Attachment, NetError> {
        Ok(Attachment { mode: NetworkMode::Isolated, ip: None })
    }
    fn teardown(&self, _id: &str) -> Result<(), NetError> {
        Ok(())
    }
    fn attachment(&self, _id: &str) -> Option<Attachment> {
        Some(Attachment { mode: NetworkMode::Isolated, ip: None })
    }
}

/// An IPv4 network: its base address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, NetError> {
        let bad = || NetError::Cidr(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr { base: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The bridge's (gateway's) address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// Pod addresses: every host address after the gateway (not the broadcast).
    fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.base);
        (2..self.size() - 1).map(move |i| Ipv4Addr::from(base + i))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The node bridge network (see the module docs).
#[derive(Debug)]
pub struct Bridge {
    os: Arc<dyn Os>,
    bridge: String,
    cidr: Cidr,
    /// `ipam.json`: pod ID to address, rewritten atomically.
    ipam: PathBuf,
    /// The address book (links and namespaces are named per pod, so it is all that pods'
    /// set-ups share), loaded from `ipam` on first use.
    book: Mutex<Book>,
    /// Held while the file is written; the generation it holds was written last.
    written: Mutex<u64>,
    pool: Pool,
}

/// Book keys of pool entries; pod IDs (UIDs) never look like this.
const POOL_KEY: &str = "pool-";
/// The pool is refilled once set-ups have left it alone this long: making namespaces
/// competes with pods' starts for the kernel's locks and the CPU.
pub const POOL_QUIET: Duration = Duration::from_millis(500);

/// Attachments made ahead of need, and the refill thread's orders.
#[derive(Debug, Default)]
struct Pool {
    state: Mutex<PoolState>,
    changed: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug)]
struct PoolState {
    ready: Vec<PodLink>,
    /// How many to keep ready.
    target: usize,
    /// When a set-up last asked (or a refill last failed): refills wait for quiet.
    last_demand: Instant,
    next: u64,
    stopped: bool,
}

impl Default for PoolState {
    fn default() -> Self {
        PoolState { ready: Vec::new(), target: 0, last_demand: Instant::now(), next: 0, stopped: false }
    }
}

/// The address book in memory, and how many changes it has had.
#[derive(Debug, Default)]
struct Book {
    map: Option<BTreeMap<String, String>>,
    generation: u64,
}

fn args(a: &[&str]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

impl Bridge {
    /// Makes (or adopts) the bridge, its address, forwarding and the NAT table.
    pub fn new(os: Arc<dyn Os>, bridge: &str, cidr: Cidr, state_dir: &Path) -> Result<Bridge, NetError> {
        os.create_dir_all(state_dir)?;
        let b = Bridge {
            os,
            bridge: bridge.into(),
            cidr,
            ipam: state_dir.join("ipam.json"),
            book: Mutex::new(Book::default()),
            written: Mutex::new(0),
            pool: Pool::default(),
        };
        b.ensure_host()?;
        b.clear_pool_leftovers()?;
        Ok(b)
    }

    /// Keep `size` attachments ready, made by a thread of their own while set-ups leave
    /// the node alone (none when `size` is 0).
    pub fn start_pool(self: &Arc<Self>, size: usize) {
        if size == 0 {
            return;
        }
        self.pool.state.lock().unwrap_or_else(|e| e.into_inner()).target = size;
        let me = Arc::downgrade(self);
        let thread = std::thread::Builder::new().name("netns-pool".into()).spawn(move || refill(me));
        match thread {
            Ok(t) => *self.pool.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t),
            Err(e) => tracing::warn!(error = %e, "no network pool: starting its thread"),
        }
    }

    /// How many attachments are ready in the pool.
    pub fn pooled(&self) -> usize {
        self.pool.state.lock().unwrap_or_else(|e| e.into_inner()).ready.len()
    }

    /// The link a pool entry `n` is made as.
    fn pool_link(&self, n: u64, addr: Ipv4Addr) -> PodLink {
        let key = format!("{POOL_KEY}{n}");
        let mine = Self::host_veth(&self.ipam.to_string_lossy());
        PodLink {
            // Names are the machine's: with the bridge and a hash of this agent's folder in
            // them, agents side by side (tests) never touch each other's entries.
            netns: Path::new(NETNS_DIR).join(format!("atoll-pool-{}-{}-{n}", self.bridge, &mine[2..8])),
            host_veth: format!(
                "vp{}",
                &Self::host_veth(&format!("{}/{}/{key}", self.bridge, self.ipam.display()))[2..]
            ),
            bridge: self.bridge.clone(),
            addr,
            prefix: self.cidr.prefix,
            gateway: self.cidr.gateway(),
            host_up: false,
        }
    }

    /// Remove the pool entries the book names (an earlier agent's, or made before a crash).
    fn clear_pool_leftovers(&self) -> Result<(), NetError> {
        let keys: Vec<String> =
            self.update(|map| (map.keys().filter(|k| k.starts_with(POOL_KEY)).cloned().collect(), false))?;
        for key in &keys {
            let Some(n) = key.strip_prefix(POOL_KEY).and_then(|n| n.parse().ok()) else { continue };
            let link = self.pool_link(n, Ipv4Addr::UNSPECIFIED);
            self.os.detach_pod_link(&link.netns, &link.host_veth)?;
        }
        if !keys.is_empty() {
            self.update(|map| {
                let before = map.len();
                for k in &keys {
                    map.remove(k);
                }
                ((), map.len() != before)
            })?;
            tracing::info!(removed = keys.len(), "removed an earlier agent's pooled pod networks");
        }
        Ok(())
    }

    /// Make pool entry `n`: its address is in the book before anything exists.
    fn make_pooled(&self, n: u64) -> Result<PodLink, NetError> {
        let key = format!("{POOL_KEY}{n}");
        let addr = self.allocate(&key)?;
        let link = self.pool_link(n, addr);
        let made = self.os.detach_pod_link(&link.netns, &link.host_veth).and_then(|()| self.os.attach_pod_link(&link));
        if let Err(e) = made {
            self.update(|map| ((), map.remove(&key).is_some()))?;
            return Err(NetError::Setup { pod: key, detail: e.to_string() });
        }
        Ok(link)
    }

    fn destroy_pooled(&self, link: &PodLink) -> Result<(), NetError> {
        self.os.detach_pod_link(&link.netns, &link.host_veth)?;
        let key = self.pool_key_of(link);
        self.update(|map| ((), map.remove(&key).is_some()))
    }

    fn pool_key_of(&self, link: &PodLink) -> String {
        let name = link.netns.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let n = name.rsplit('-').next().unwrap_or_default();
        format!("{POOL_KEY}{n}")
    }

    /// A pool entry for pod `id`, re-keyed in the book, or `None` (pool empty, or `id`
    /// has an address already: a set-up being redone keeps it).
    fn take_pooled(&self, id: &str) -> Result<Option<PodLink>, NetError> {
        let entry = {
            let mut st = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
            st.last_demand = Instant::now();
            let entry = st.ready.pop();
            self.pool.changed.notify_all();
            entry
        };
        let Some(entry) = entry else { return Ok(None) };
        let key = self.pool_key_of(&entry);
        let ip = entry.addr.to_string();
        let taken = self.update(|map| {
            if map.contains_key(id) || map.get(&key) != Some(&ip) {
                return (false, false);
            }
            map.remove(&key);
            map.insert(id.to_string(), ip.clone());
            (true, true)
        })?;
        if !taken {
            self.destroy_pooled(&entry)?;
            return Ok(None);
        }
        Ok(Some(entry))
    }

    pub fn into_arc(self) -> Arc<dyn PodNetwork> {
        Arc::new(self)
    }

    fn ip(&self, a: &[&str]) -> Result<(), NetError> {
        self.run("ip", a)
    }

    fn run(&self, program: &str, a: &[&str]) -> Result<(), NetError> {
        let out = self.os.run(Path::new(program), &args(a))?;
        if out.success {
            Ok(())
        } else {
            Err(NetError::Command { what: format!("{program} {}", a.join(" ")), detail: out.stderr.trim().to_string() })
        }
    }

    fn ensure_host(&self) -> Result<(), NetError> {
        let exists = self.os.run(Path::new("ip"), &args(&["link", "show", "dev", &self.bridge]))?.success;
        if !exists {
            self.ip(&["link", "add", "name", &self.bridge, "type", "bridge"])?;
        }
        let gw = format!("{}/{}", self.cidr.gateway(), self.cidr.prefix);
        // `replace` is idempotent where `add` fails on a second run.
        self.ip(&["addr", "replace", &gw, "dev", &self.bridge])?;
        self.ip(&["link", "set", "dev", &self.bridge, "up"])?;
        self.run("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        let table = format!("atoll-{}", self.bridge);
        let cidr = self.cidr.to_string();
        // Declaring then deleting the table makes the whole file an atomic replace.
        let rules = format!(
            "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n\
             \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {cidr} ip daddr != {cidr} masquerade\n\t}}\n\
             \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr {cidr} accept\n\t\tip daddr {cidr} ct state established,related accept\n\t}}\n}}\n"
        );
        let file = self.ipam.with_file_name("nat.nft");
        self.os.write_file_atomic(&file, rules.as_bytes())?;
        let loaded = self.run("nft", &["-f", &file.to_string_lossy()]);
        // Only the book stays in the folder: an empty folder is a node with no pod network.
        self.os.remove_file(&file)?;
        loaded
    }

    fn netns(id: &str) -> String {
        format!("atoll-{id}")
    }

    /// The host end's name: at most 15 bytes (IFNAMSIZ), unique per pod ID.
    fn host_veth(id: &str) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("va{:012x}", h & 0xffff_ffff_ffff)
    }

    fn load(&self) -> Result<BTreeMap<String, String>, NetError> {
        match self.os.read_file(&self.ipam)? {
            None => Ok(BTreeMap::new()),
            // Empty: a write a machine crash cut short (see `persist`), when nothing it named
            // survived either.
            Some(b) if b.is_empty() => Ok(BTreeMap::new()),
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| NetError::CorruptState { path: self.ipam.clone(), detail: e.to_string() }),
        }
    }

    /// Look at or change the address book with `f` (which says whether it changed
    /// anything); returns once the file holds the book as `f` left it.
    fn update<T>(&self, f: impl FnOnce(&mut BTreeMap<String, String>) -> (T, bool)) -> Result<T, NetError> {
        let (out, generation) = {
            let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
            if book.map.is_none() {
                book.map = Some(self.load()?);
            }
            let (out, changed) = f(book.map.as_mut().unwrap_or_else(|| unreachable!("loaded above")));
            if changed {
                book.generation += 1;
            }
            (out, book.generation)
        };
        // Also when unchanged: an earlier write that failed is retried before anyone acts
        // on an address the file does not hold yet.
        self.persist(generation)?;
        Ok(out)
    }

    /// Write the book once it holds generation `generation`. Writes (each a synced file
    /// and a rename, ~20 ms on a busy disk) go one at a time, but each writes the whole
    /// book as it is then, so set-ups waiting meanwhile are all covered by the next one
    /// (group commit) instead of queueing one sync each behind a lock.
    fn persist(&self, generation: u64) -> Result<(), NetError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if *written >= generation {
            return Ok(());
        }
        let (bytes, now) = {
            let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
            let map = book.map.as_ref().filter(|m| !m.is_empty());
            (map.map(|m| serde_json::to_vec_pretty(m).unwrap_or_default()), book.generation)
        };
        // An empty book is no file: a node whose pods are all gone leaves its folder empty.
        let Some(bytes) = bytes else {
            self.os.remove_file(&self.ipam)?;
            *written = now;
            return Ok(());
        };
        // Not synced: what the book names (namespaces, veths, the addresses in them) lives in
        // the kernel and ends with a reboot, which may lose or empty an unsynced book; an
        // agent restart sees every write (the page cache is the machine's). A sync here cost
        // ~20 ms per group on pods' start-up path.
        self.os.write_file_unsynced(&self.ipam, &bytes)?;
        *written = now;
        Ok(())
    }

    fn allocate(&self, id: &str) -> Result<Ipv4Addr, NetError> {
        let cidr = self.cidr;
        self.update(|map| {
            if let Some(ip) = map.get(id).and_then(|ip| ip.parse().ok()) {
                return (Ok(ip), false);
            }
            let used: std::collections::HashSet<&str> = map.values().map(String::as_str).collect();
            match cidr.pod_addresses().find(|a| !used.contains(a.to_string().as_str())) {
                Some(ip) => {
                    map.insert(id.to_string(), ip.to_string());
                    (Ok(ip), true)
                }
                None => (Err(NetError::Exhausted(cidr.to_string())), false),
            }
        })?
    }

    fn netns_path(id: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(Self::netns(id))
    }
}

impl PodNetwork for Bridge {
    fn setup(&self, id: &str) -> Result<Attachment, NetError> {
        // Only the address book is shared; every name below is the pod's own (and one pod
        // is never set up by two workers at once), so pods' set-ups run side by side.
        let netns = Self::netns_path(id);
        let host_veth = Self::host_veth(id);
        if let Some(pooled) = self.take_pooled(id)? {
            match self.os.adopt_pod_link(&pooled, &netns, &host_veth) {
                Ok(()) => {
                    return Ok(Attachment { mode: NetworkMode::Namespace(netns), ip: Some(pooled.addr.to_string()) });
                }
                // Made afresh below, under the pod's names, with the address it now has.
                Err(e) => {
                    tracing::warn!(pod = id, error = %e, "taking a pooled network; making one");
                    let _ = self.os.detach_pod_link(&pooled.netns, &pooled.host_veth);
                }
            }
        }
        let ip = self.allocate(id)?;
        let link = PodLink {
            netns: Self::netns_path(id),
            host_veth: Self::host_veth(id),
            bridge: self.bridge.clone(),
            addr: ip,
            prefix: self.cidr.prefix,
            gateway: self.cidr.gateway(),
            host_up: true,
        };
        // Start from nothing: a half-made attachment (the agent died midway) is redone.
        let setup_err = |e: crate::os::OsError| NetError::Setup { pod: id.to_string(), detail: e.to_string() };
        self.os.detach_pod_link(&link.netns, &link.host_veth).map_err(setup_err)?;
        self.os.attach_pod_link(&link).map_err(setup_err)?;
        Ok(Attachment { mode: NetworkMode::Namespace(Self::netns_path(id)), ip: Some(ip.to_string()) })
    }

    fn teardown(&self, id: &str) -> Result<(), NetError> {
        self.os.detach_pod_link(&Self::netns_path(id), &Self::host_veth(id))?;
        self.update(|map| ((), map.remove(id).is_some()))
    }

    fn attachment(&self, id: &str) -> Option<Attachment> {
        let ip = self.update(|map| (map.get(id).cloned(), false)).ok()??;
        Some(Attachment { mode: NetworkMode::Namespace(Self::netns_path(id)), ip: Some(ip) })
    }

    /// The address book is written before anything is made, so it names every pod that
    /// may have a namespace or veth (pool entries are the pool's own business).
    fn attached(&self) -> Vec<String> {
        self.load().map(|m| m.into_keys().filter(|k| !k.starts_with(POOL_KEY)).collect()).unwrap_or_default()
    }

    fn shutdown(&self) {
        self.pool.state.lock().unwrap_or_else(|e| e.into_inner()).stopped = true;
        self.pool.changed.notify_all();
        // The thread finishes the entry it is making (and removes it, seeing `stopped`).
        if let Some(t) = self.pool.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        let ready = std::mem::take(&mut self.pool.state.lock().unwrap_or_else(|e| e.into_inner()).ready);
        for link in &ready {
            if let Err(e) = self.destroy_pooled(link) {
                tracing::warn!(netns = %link.netns.display(), error = %e, "removing a pooled pod network");
            }
        }
    }
}

/// The pool's refill loop: one entry at a time, while the pool is short and set-ups have
/// been quiet for [`POOL_QUIET`]; ends when the bridge stops (or is gone).
fn refill(bridge: Weak<Bridge>) {
    let mut logged_full = false;
    loop {
        let Some(b) = bridge.upgrade() else { return };
        let n = {
            let mut st = b.pool.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if st.stopped {
                    return;
                }
                if st.ready.len() >= st.target {
                    if !logged_full {
                        tracing::info!(entries = st.ready.len(), "pod network pool filled");
                        logged_full = true;
                    }
                    // Ours is the last reference: the bridge was dropped without a shutdown.
                    if Arc::strong_count(&b) == 1 {
                        return;
                    }
                    st = b.pool.changed.wait_timeout(st, Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner()).0;
                    continue;
                }
                let quiet = st.last_demand.elapsed();
                if quiet < POOL_QUIET {
                    st = b.pool.changed.wait_timeout(st, POOL_QUIET - quiet).unwrap_or_else(|e| e.into_inner()).0;
                    continue;
                }
                st.next += 1;
                break st.next;
            }
        };
        logged_full = false;
        match b.make_pooled(n) {
            Ok(link) => {
                let mut st = b.pool.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.stopped {
                    drop(st);
                    let _ = b.destroy_pooled(&link);
                    return;
                }
                st.ready.push(link);
            }
            Err(e) => {
                tracing::warn!(error = %e, "making a pooled pod network");
                // Try again after a quiet period, not in a tight loop.
                b.pool.state.lock().unwrap_or_else(|e| e.into_inner()).last_demand = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{Call, FakeOs};

    #[test]
    fn cidrs_parse_and_name_their_addresses() {
        let c = Cidr::parse("10.88.7.9/16").unwrap();
        assert_eq!(c.to_string(), "10.88.0.0/16");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        let small = Cidr::parse("192.168.5.0/30").unwrap();
        assert_eq!(small.pod_addresses().collect::<Vec<_>>(), vec![Ipv4Addr::new(192, 168, 5, 2)]);
        for bad in ["10.88.0.0", "10.88.0.0/31", "x/16", "10.88.0.0/x", "::1/64"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_allocated_once_kept_and_released() {
        let os = Arc::new(FakeOs::new("", vec![]));
        let cidr = Cidr::parse("10.9.0.0/30").unwrap();
        let net = Bridge::new(os.clone(), "br-t", cidr, Path::new("/state")).unwrap();
        let a = net.setup("pod-a").unwrap();
        assert_eq!(a.ip.as_deref(), Some("10.9.0.2"));
        assert_eq!(a.mode, NetworkMode::Namespace("/run/netns/atoll-pod-a".into()));
        // Repeated: the same address; the /30 has no second one.
        assert_eq!(net.setup("pod-a").unwrap().ip, a.ip);
        assert!(matches!(net.setup("pod-b"), Err(NetError::Exhausted(_))));
        assert_eq!(net.attachment("pod-a"), Some(a));
        assert_eq!(net.attached(), ["pod-a"]);
        net.teardown("pod-a").unwrap();
        assert!(net.attached().is_empty());
        assert_eq!(net.attachment("pod-a"), None);
        assert_eq!(net.setup("pod-b").unwrap().ip.as_deref(), Some("10.9.0.2"));
        let runs: Vec<String> = os
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Run(v) => Some(v.join(" ")),
                _ => None,
            })
            .collect();
        assert!(runs.iter().any(|r| r.contains("nft -f /state/nat.nft")), "{runs:?}");
        // Pods are attached without child processes: every `ip` run is the bridge's own.
        assert!(runs.iter().filter(|r| r.starts_with("ip ")).all(|r| r.contains("br-t")), "{runs:?}");
        let calls = os.calls();
        let ns_a = PathBuf::from("/run/netns/atoll-pod-a");
        let attach = calls.iter().position(|c| {
            *c == Call::AttachPodLink(PodLink {
                netns: ns_a.clone(),
                host_veth: Bridge::host_veth("pod-a"),
                bridge: "br-t".into(),
                addr: Ipv4Addr::new(10, 9, 0, 2),
                prefix: 30,
                gateway: Ipv4Addr::new(10, 9, 0, 1),
                host_up: true,
            })
        });
        let detach = Call::DetachPodLink { netns: ns_a, host_veth: Bridge::host_veth("pod-a") };
        // A set-up first clears leftovers; the teardown removes the link and namespace.
        let attach = attach.expect("pod-a attached");
        assert_eq!(calls[attach - 1], detach);
        assert_eq!(calls.iter().filter(|c| **c == detach).count(), 3, "{calls:?}");
        assert!(Bridge::host_veth("a-very-long-pod-uid-0000-1111-2222").len() <= 15);
    }

    fn book(os: &FakeOs) -> BTreeMap<String, String> {
        serde_json::from_slice(&os.file(Path::new("/p/ipam.json")).unwrap_or_default()).unwrap_or_default()
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn pods_take_pooled_networks_renamed_and_the_pool_never_outlives_its_agent() {
        let os = Arc::new(FakeOs::new("", vec![]));
        let cidr = Cidr::parse("10.9.0.0/24").unwrap();
        let net = Arc::new(Bridge::new(os.clone(), "br-p", cidr, Path::new("/p")).unwrap());
        net.start_pool(2);
        wait_until("two pooled", || net.pooled() == 2);
        let pooled: Vec<String> = book(&os).into_keys().collect();
        assert_eq!(pooled, ["pool-1", "pool-2"]);
        // Pool entries are made with the host end down (so it can be renamed) under pool names.
        let made: Vec<PodLink> = os
            .calls()
            .into_iter()
            .filter_map(|c| if let Call::AttachPodLink(l) = c { Some(l) } else { None })
            .collect();
        assert!(
            made.iter().all(|l| !l.host_up && l.netns.to_string_lossy().starts_with("/run/netns/atoll-pool-br-p-")),
            "{made:?}"
        );
        assert!(made.iter().all(|l| l.host_veth.starts_with("vp") && l.host_veth.len() <= 15), "{made:?}");

        let a = net.setup("pod-a").unwrap();
        assert_eq!(a.mode, NetworkMode::Namespace("/run/netns/atoll-pod-a".into()));
        let adopted = os.calls().into_iter().find_map(|c| match c {
            Call::AdoptPodLink { pooled, netns, host_veth } => Some((pooled, netns, host_veth)),
            _ => None,
        });
        let (from, netns, veth) = adopted.expect("a pooled network was taken");
        assert!(from.to_string_lossy().starts_with("/run/netns/atoll-pool-br-p-"), "{from:?}");
        assert_eq!((netns, veth), (PathBuf::from("/run/netns/atoll-pod-a"), Bridge::host_veth("pod-a")));
        // The book names the pod (re-keyed, same address) and one pool entry; the sweep
        // sees pods only.
        let after = book(&os);
        assert_eq!(after.get("pod-a"), a.ip.as_ref());
        assert_eq!(after.keys().filter(|k| k.starts_with(POOL_KEY)).count(), 1);
        assert_eq!(net.attached(), ["pod-a"]);
        // A repeated set-up keeps the pod's address and takes nothing more.
        let adoptions = |os: &FakeOs| os.calls().iter().filter(|c| matches!(c, Call::AdoptPodLink { .. })).count();
        assert_eq!(net.setup("pod-a").unwrap().ip, a.ip);
        assert_eq!(adoptions(&os), 1);
        // Refilled once set-ups leave it alone.
        wait_until("refilled", || net.pooled() == 2);

        // Stopping removes the pool's entries and keeps the pod's.
        net.shutdown();
        assert_eq!(book(&os).into_keys().collect::<Vec<_>>(), ["pod-a"]);
        let detached = |os: &FakeOs| os.calls().iter().filter(|c| matches!(c, Call::DetachPodLink { .. })).count();
        assert!(detached(&os) >= 2, "{:?}", os.calls());

        // Entries a crashed agent left in the book are removed by the next one, never handed out.
        let crashed = Arc::new(Bridge::new(os.clone(), "br-p", cidr, Path::new("/p")).unwrap());
        crashed.start_pool(1);
        wait_until("one pooled", || crashed.pooled() == 1);
        drop(crashed);
        let before = detached(&os);
        let next = Bridge::new(os.clone(), "br-p", cidr, Path::new("/p")).unwrap();
        assert_eq!(book(&os).into_keys().collect::<Vec<_>>(), ["pod-a"]);
        assert_eq!(detached(&os), before + 1);
        assert_eq!(next.pooled(), 0);
    }

    #[test]
    fn concurrent_set_ups_get_distinct_addresses_and_the_file_holds_them_all() {
        let os = Arc::new(FakeOs::new("", vec![]));
        let net =
            Arc::new(Bridge::new(os.clone(), "br-t", Cidr::parse("10.9.0.0/24").unwrap(), Path::new("/s")).unwrap());
        let ips: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let net = net.clone();
                    s.spawn(move || net.setup(&format!("p{i}")).unwrap().ip.unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let distinct: std::collections::BTreeSet<&String> = ips.iter().collect();
        assert_eq!(distinct.len(), 16);
        let file: BTreeMap<String, String> =
            serde_json::from_slice(&os.file(Path::new("/s/ipam.json")).unwrap()).unwrap();
        assert_eq!(file.len(), 16);
        // A new agent (a restart) reads them back.
        let again = Bridge::new(os.clone(), "br-t", Cidr::parse("10.9.0.0/24").unwrap(), Path::new("/s")).unwrap();
        assert_eq!(again.attachment("p3").and_then(|a| a.ip), Some(ips[3].clone()));
        for i in 0..16 {
            net.teardown(&format!("p{i}")).unwrap();
        }
        // An empty book is no file: nothing is left in the folder.
        assert_eq!(os.file(Path::new("/s/ipam.json")), None);
        assert_eq!(os.file(Path::new("/s/nat.nft")), None, "the rules file is removed once loaded");
    }
}
