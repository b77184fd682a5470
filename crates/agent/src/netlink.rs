//! Route netlink (rtnetlink), spoken directly: the handful of requests a pod's bridge
//! attachment needs, so setting up a pod's network costs a few system calls instead of
//! about ten `ip` processes (fork + exec + dynamic linking each, the bulk of pod start-up
//! on a busy node).
//!
//! Two halves: [`Request`] builds messages (pure, unit-tested byte for byte) and
//! [`Socket`] sends them and waits for the kernel's acknowledgement. A socket talks to
//! the network namespace it was opened in, whichever thread uses it later; that is how
//! the pod side is configured without entering the pod's namespace again.
//!
//! Wire format (rtnetlink(7)): a 16-byte `nlmsghdr`, a fixed family header (`ifinfomsg`,
//! `ifaddrmsg` or `rtmsg`), then attributes (`rtattr`: length, type, payload, padded to 4
//! bytes), all in host byte order except addresses, which are in network order.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::io::Errno;
use rustix::mount::{MountPropagationFlags, UnmountFlags};
use rustix::net::netlink::SocketAddrNetlink;
use rustix::thread::UnshareFlags;

use crate::os::OsError;

const NLMSG_ERROR: u16 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_NEWROUTE: u16 = 24;

const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const RTA_GATEWAY: u16 = 5;

const IFF_UP: u32 = 0x1;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const RT_TABLE_MAIN: u8 = 254;
/// The route's origin as `ip route add` records it ("boot"): set by an administrator.
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

const HEADER_LEN: usize = 16;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One request under construction. The sequence number is filled in by [`Socket`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    buf: Vec<u8>,
    /// Offsets of the nested attributes still open, innermost last.
    open: Vec<usize>,
}

impl Request {
    fn new(kind: u16, flags: u16) -> Request {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `bytes`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port: 0 is the kernel
        Request { buf, open: Vec::new() }
    }

    fn pad(&mut self) {
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    /// `ifinfomsg`: family, padding, device type, index, flags, and which flags to change.
    fn link_header(&mut self, index: i32, up: bool) -> &mut Self {
        let mut h = [0u8; 16];
        h[0] = AF_UNSPEC;
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        let (flags, change) = if up { (IFF_UP, IFF_UP) } else { (0, 0) };
        h[8..12].copy_from_slice(&flags.to_ne_bytes());
        h[12..16].copy_from_slice(&change.to_ne_bytes());
        self.raw(&h)
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.raw(payload)
    }

    fn attr_u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// Names are NUL-terminated C strings on the wire.
    fn attr_name(&mut self, kind: u16, name: &str) -> &mut Self {
        let mut v = Vec::with_capacity(name.len() + 1);
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        self.attr(kind, &v)
    }

    fn begin(&mut self, kind: u16) -> &mut Self {
        self.open.push(self.buf.len());
        self.attr(kind, &[])
    }

    fn end(&mut self) -> &mut Self {
        if let Some(start) = self.open.pop() {
            let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The finished message with sequence number `seq`.
    pub fn bytes(&self, seq: u32) -> Vec<u8> {
        let mut b = self.buf.clone();
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
        b
    }

    pub fn kind(&self) -> u16 {
        u16::from_ne_bytes([self.buf[4], self.buf[5]])
    }

    /// A veth pair: `name` here (enslaved to bridge `master`, up if `up`) and `peer` in
    /// the network namespace open as `peer_ns`, made in one request.
    pub fn new_veth(name: &str, master: i32, peer: &str, peer_ns: BorrowedFd<'_>, up: bool) -> Request {
        let mut r = Request::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        r.link_header(0, up).attr_name(IFLA_IFNAME, name).attr_u32(IFLA_MASTER, master as u32);
        r.begin(IFLA_LINKINFO).attr_name(IFLA_INFO_KIND, "veth").begin(IFLA_INFO_DATA).begin(VETH_INFO_PEER);
        // The peer's own ifinfomsg, then its attributes, inside VETH_INFO_PEER.
        r.link_header(0, false).attr_name(IFLA_IFNAME, peer).attr_u32(IFLA_NET_NS_FD, peer_ns.as_raw_fd() as u32);
        r.end().end().end();
        r
    }

    /// Bring a link up, by name (the kernel looks the name up when the index is 0).
    pub fn link_up(name: &str) -> Request {
        let mut r = Request::new(RTM_NEWLINK, 0);
        r.link_header(0, true).attr_name(IFLA_IFNAME, name);
        r
    }

    /// Rename link `index` (the kernel renames only links that are down).
    pub fn rename_link(index: i32, name: &str) -> Request {
        let mut r = Request::new(RTM_NEWLINK, 0);
        r.link_header(index, false).attr_name(IFLA_IFNAME, name);
        r
    }

    pub fn get_link(name: &str) -> Request {
        let mut r = Request::new(RTM_GETLINK, 0);
        r.link_header(0, false).attr_name(IFLA_IFNAME, name);
        r
    }

    pub fn del_link(name: &str) -> Request {
        let mut r = Request::new(RTM_DELLINK, 0);
        r.link_header(0, false).attr_name(IFLA_IFNAME, name);
        r
    }

    /// `ip addr add <ip>/<prefix> dev <index>`.
    pub fn new_addr(index: i32, ip: Ipv4Addr, prefix: u8) -> Request {
        let mut r = Request::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        let mut h = [0u8; 8];
        h[0] = AF_INET;
        h[1] = prefix;
        h[3] = RT_SCOPE_UNIVERSE;
        h[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
        r.raw(&h).attr(IFA_LOCAL, &ip.octets()).attr(IFA_ADDRESS, &ip.octets());
        r
    }

    /// `ip route add default via <gateway>` in the main table.
    pub fn default_route(gateway: Ipv4Addr) -> Request {
        let mut r = Request::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        let h = [AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0, 0, 0, 0];
        r.raw(&h).attr(RTA_GATEWAY, &gateway.octets());
        r
    }
}

/// What the kernel answered a request with: an error number, or (for `RTM_GETLINK`) the
/// link's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Ack,
    Link { index: i32 },
    Error(Errno),
}

/// Read the messages of one datagram that answer `seq`, in order.
pub fn parse_replies(mut buf: &[u8], seq: u32) -> Vec<Reply> {
    let mut out = Vec::new();
    while buf.len() >= HEADER_LEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < HEADER_LEN || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let their_seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let body = &buf[HEADER_LEN..len];
        if their_seq == seq {
            match kind {
                NLMSG_ERROR if body.len() >= 4 => {
                    let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    out.push(if code == 0 { Reply::Ack } else { Reply::Error(Errno::from_raw_os_error(-code)) });
                }
                RTM_NEWLINK if body.len() >= 8 => {
                    out.push(Reply::Link { index: i32::from_ne_bytes([body[4], body[5], body[6], body[7]]) });
                }
                _ => {}
            }
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

/// A route netlink socket, bound to the network namespace it was opened in.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open() -> Result<Socket, Errno> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        // NETLINK_ROUTE is protocol 0, the default.
        let fd = rustix::net::socket_with(AddressFamily::NETLINK, SocketType::RAW, SocketFlags::CLOEXEC, None)?;
        Ok(Socket { fd, seq: 0 })
    }

    /// Send `req` and wait for its acknowledgement; a `RTM_GETLINK` answers the index.
    fn exchange(&mut self, req: &Request) -> Result<Option<i32>, Errno> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        rustix::net::sendto(
            self.fd.as_fd(),
            &req.bytes(seq),
            rustix::net::SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        // Large enough for a link's full description (statistics included).
        let mut buf = vec![0u8; 32 * 1024];
        let mut index = None;
        loop {
            let (n, _) = rustix::net::recv(self.fd.as_fd(), &mut buf[..], rustix::net::RecvFlags::empty())?;
            for reply in parse_replies(&buf[..n.min(buf.len())], seq) {
                match reply {
                    Reply::Ack => return Ok(index),
                    Reply::Error(e) => return Err(e),
                    Reply::Link { index: i } => index = Some(i),
                }
            }
        }
    }

    pub fn request(&mut self, req: &Request) -> Result<(), Errno> {
        self.exchange(req).map(|_| ())
    }

    /// The index of link `name` (`ENODEV` when there is none).
    pub fn link_index(&mut self, name: &str) -> Result<i32, Errno> {
        self.exchange(&Request::get_link(name))?.ok_or(Errno::NODEV)
    }
}

/// `ip netns` keeps its named namespaces here; so do we, so `ip netns list` and `ip -n`
/// keep working on a node and older clean-up code finds them.
pub const NETNS_DIR: &str = "/run/netns";

/// Make `/run/netns` a shared mount point once, as `ip netns add` does, so namespaces
/// bind-mounted there show up in mount namespaces made later (e.g. by `ip netns exec`).
fn share_netns_dir() -> Result<(), OsError> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|source| OsError::Io { what: "creating", path: dir.into(), source })?;
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    let sys = |what| move |source| OsError::Sys { what, path: dir.into(), source };
    match rustix::mount::mount_change(dir, shared) {
        // Not a mount point yet: make it one by binding it onto itself.
        Err(Errno::INVAL) => {
            rustix::mount::mount_bind_recursive(dir, dir).map_err(sys("bind-mounting onto itself"))?;
            rustix::mount::mount_change(dir, shared).map_err(sys("making shared"))?;
        }
        other => other.map_err(sys("making shared"))?,
    }
    *done = true;
    Ok(())
}

/// Create the named network namespace `path` (a new, empty file under [`NETNS_DIR`]) and
/// return a netlink socket inside it plus a handle on it. The namespace is made on a
/// thread of its own, which alone enters it and then ends, so no agent thread ever runs
/// in a pod's namespace.
fn create_netns(path: &Path) -> Result<(Socket, File), OsError> {
    share_netns_dir()?;
    let sys = |what| move |source| OsError::Sys { what, path: path.into(), source };
    let made = crate::os::on_unshared_thread(UnshareFlags::NEWNET, || {
        File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(path)
            .map_err(|source| OsError::Io { what: "creating", path: path.into(), source })?;
        // /proc/self would name the main thread's namespace; this thread's is the new one.
        if let Err(e) = rustix::mount::mount_bind("/proc/thread-self/ns/net", path) {
            let _ = std::fs::remove_file(path);
            return Err(sys("bind-mounting a network namespace on")(e));
        }
        Socket::open().map_err(sys("opening a netlink socket in"))
    })?;
    let ns = File::open(path).map_err(|source| OsError::Io { what: "opening", path: path.into(), source })?;
    Ok((made, ns))
}

/// Remove named network namespace `path`, as `ip netns del` does: detach its mount (the
/// namespace itself lives on while a process is in it) and delete the file.
fn delete_netns(path: &Path) -> Result<(), OsError> {
    match rustix::mount::unmount(path, UnmountFlags::DETACH) {
        Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
        Err(source) => return Err(OsError::Sys { what: "unmounting", path: path.into(), source }),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(OsError::Io { what: "removing", path: path.into(), source: e })
        }
        _ => Ok(()),
    }
}

/// A pod's place on the node bridge, made by [`attach`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    /// The named network namespace to create, `/run/netns/<name>`.
    pub netns: PathBuf,
    /// The host end of the veth pair; the pod's end is `eth0`.
    pub host_veth: String,
    pub bridge: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// Bring the host end up. A pooled link's stays down until a pod takes it ([`adopt`]):
    /// the kernel renames only links that are down.
    pub host_up: bool,
}

fn netlink_err<'a>(what: &'static str, name: &'a str) -> impl FnOnce(Errno) -> OsError + 'a {
    move |source| OsError::Sys { what, path: name.into(), source }
}

/// Make `link`: the namespace, the veth pair on the bridge (up), and inside the pod
/// loopback up, `eth0` with its address, up, and a default route via the gateway. On
/// failure whatever was made is removed again.
pub fn attach(link: &PodLink) -> Result<(), OsError> {
    let (mut pod, ns) = create_netns(&link.netns)?;
    let result = (|| {
        let mut host = Socket::open().map_err(netlink_err("opening a netlink socket for", &link.bridge))?;
        let master = host.link_index(&link.bridge).map_err(netlink_err("looking up link", &link.bridge))?;
        host.request(&Request::new_veth(&link.host_veth, master, "eth0", ns.as_fd(), link.host_up))
            .map_err(netlink_err("creating veth pair", &link.host_veth))?;
        pod.request(&Request::link_up("lo")).map_err(netlink_err("bringing up in the pod", "lo"))?;
        let eth0 = pod.link_index("eth0").map_err(netlink_err("looking up in the pod", "eth0"))?;
        pod.request(&Request::new_addr(eth0, link.addr, link.prefix))
            .map_err(netlink_err("adding the pod address to", "eth0"))?;
        pod.request(&Request::link_up("eth0")).map_err(netlink_err("bringing up in the pod", "eth0"))?;
        pod.request(&Request::default_route(link.gateway)).map_err(netlink_err("adding the default route via", "eth0"))
    })();
    if result.is_err() {
        let _ = detach(&link.netns, &link.host_veth);
    }
    result
}

/// Hand `pooled` (made by [`attach`] with its host end down) to a pod: its namespace is
/// bound at `netns` as well and then unbound from its pool name, its host end renamed
/// `host_veth` and brought up. Nothing inside the namespace changes (address, routes).
pub fn adopt(pooled: &PodLink, netns: &Path, host_veth: &str) -> Result<(), OsError> {
    share_netns_dir()?;
    File::options().read(true).write(true).create_new(true).mode(0o444).open(netns).map_err(|source| OsError::Io {
        what: "creating",
        path: netns.into(),
        source,
    })?;
    if let Err(source) = rustix::mount::mount_bind(&pooled.netns, netns) {
        let _ = std::fs::remove_file(netns);
        return Err(OsError::Sys { what: "bind-mounting a network namespace on", path: netns.into(), source });
    }
    delete_netns(&pooled.netns)?;
    let mut host = Socket::open().map_err(netlink_err("opening a netlink socket for", host_veth))?;
    let index = host.link_index(&pooled.host_veth).map_err(netlink_err("looking up link", &pooled.host_veth))?;
    host.request(&Request::rename_link(index, host_veth)).map_err(netlink_err("renaming a link to", host_veth))?;
    host.request(&Request::link_up(host_veth)).map_err(netlink_err("bringing up link", host_veth))
}

/// Remove a pod's veth pair (its `eth0` end goes with it) and its named namespace;
/// either being absent already is fine.
pub fn detach(netns: &Path, host_veth: &str) -> Result<(), OsError> {
    let mut host = Socket::open().map_err(netlink_err("opening a netlink socket for", host_veth))?;
    match host.request(&Request::del_link(host_veth)) {
        Ok(()) | Err(Errno::NODEV) => {}
        Err(e) => return Err(netlink_err("deleting link", host_veth)(e)),
    }
    delete_netns(netns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Walk attributes: (type, payload) pairs.
    fn attrs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = u16_at(b, 0) as usize;
            out.push((u16_at(b, 2), b[4..len].to_vec()));
            b = &b[align4(len).min(b.len())..];
        }
        out
    }

    #[test]
    fn header_carries_length_kind_flags_and_sequence() {
        let b = Request::link_up("lo").bytes(7);
        assert_eq!(u32_at(&b, 0) as usize, b.len());
        assert_eq!(b.len() % 4, 0);
        assert_eq!(u16_at(&b, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&b, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&b, 8), 7);
        assert_eq!(u32_at(&b, 12), 0);
        // ifinfomsg: index 0 (look up by name), IFF_UP set and changed.
        assert_eq!(u32_at(&b, 20), 0);
        assert_eq!((u32_at(&b, 24), u32_at(&b, 28)), (IFF_UP, IFF_UP));
        // "lo\0" is 3 bytes: attribute length 7, padded to 8.
        assert_eq!(attrs(&b[32..]), vec![(IFLA_IFNAME, b"lo\0".to_vec())]);
        assert_eq!(u16_at(&b, 32), 7);
    }

    #[test]
    fn veth_request_nests_the_peer_with_its_namespace() {
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let b = Request::new_veth("va0123", 5, "eth0", ns.as_fd(), true).bytes(1);
        assert_eq!(u16_at(&b, 6), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        assert_eq!(u32_at(&b, 0) as usize, b.len());
        let top = attrs(&b[32..]);
        assert_eq!(top[0], (IFLA_IFNAME, b"va0123\0".to_vec()));
        assert_eq!(top[1], (IFLA_MASTER, 5u32.to_ne_bytes().to_vec()));
        assert_eq!(top[2].0, IFLA_LINKINFO);
        let info = attrs(&top[2].1);
        assert_eq!(info[0], (IFLA_INFO_KIND, b"veth\0".to_vec()));
        let data = attrs(&info[1].1);
        assert_eq!(data[0].0, VETH_INFO_PEER);
        let peer = &data[0].1;
        // The peer starts with its own 16-byte ifinfomsg (not up: it is configured inside).
        assert_eq!(u32_at(peer, 8), 0);
        let peer_attrs = attrs(&peer[16..]);
        assert_eq!(peer_attrs[0], (IFLA_IFNAME, b"eth0\0".to_vec()));
        assert_eq!(peer_attrs[1], (IFLA_NET_NS_FD, (ns.as_raw_fd() as u32).to_ne_bytes().to_vec()));
        // Every nested length covers exactly its content.
        assert_eq!(u16_at(&b, 32 + 12 + 8) as usize, top[2].1.len() + 4);
    }

    #[test]
    fn address_and_route_requests() {
        let b = Request::new_addr(3, Ipv4Addr::new(10, 88, 0, 2), 16).bytes(2);
        assert_eq!(u16_at(&b, 4), RTM_NEWADDR);
        assert_eq!(&b[16..20], &[AF_INET, 16, 0, RT_SCOPE_UNIVERSE]);
        assert_eq!(u32_at(&b, 20), 3);
        assert_eq!(attrs(&b[24..]), vec![(IFA_LOCAL, vec![10, 88, 0, 2]), (IFA_ADDRESS, vec![10, 88, 0, 2])]);

        let b = Request::default_route(Ipv4Addr::new(10, 88, 0, 1)).bytes(3);
        assert_eq!(u16_at(&b, 4), RTM_NEWROUTE);
        assert_eq!(&b[16..24], &[AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST]);
        assert_eq!(attrs(&b[28..]), vec![(RTA_GATEWAY, vec![10, 88, 0, 1])]);
        assert_eq!(Request::del_link("x").kind(), RTM_DELLINK);
    }

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize(align4(m.len()), 0);
        m
    }

    #[test]
    fn replies_parse_acks_errors_links_and_skip_other_sequences() {
        let mut link = vec![0u8; 16];
        link[4..8].copy_from_slice(&9i32.to_ne_bytes());
        let mut d = message(RTM_NEWLINK, 4, &link);
        d.extend(message(NLMSG_ERROR, 3, &(-17i32).to_ne_bytes()));
        d.extend(message(NLMSG_ERROR, 4, &0i32.to_ne_bytes()));
        assert_eq!(parse_replies(&d, 4), vec![Reply::Link { index: 9 }, Reply::Ack]);
        assert_eq!(parse_replies(&d, 3), vec![Reply::Error(Errno::EXIST)]);
        // A truncated or nonsensical header ends the walk instead of panicking.
        assert_eq!(parse_replies(&d[..10], 4), vec![]);
        let mut bad = d.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(parse_replies(&bad, 4), vec![]);
    }
}
