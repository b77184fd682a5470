//! Pod links made over netlink against the real kernel: what `ip` shows afterwards, that
//! removal leaves nothing, and (printed, not asserted) how long one takes next to the
//! `ip` commands it replaced.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent::os::{Os, PodLink, RealOs};

fn ip(args: &[&str]) -> (bool, String) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2) is needed: apt-get install iproute2");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// A bridge of this test process's own, removed even when the test fails.
struct TestBridge(String);

impl TestBridge {
    fn new() -> TestBridge {
        crate::require_machine();
        let name = format!("atn{}", std::process::id());
        let _ = ip(&["link", "del", "dev", &name]);
        let (ok, out) = ip(&["link", "add", "name", &name, "type", "bridge"]);
        assert!(ok, "making bridge {name}: {out}");
        let (ok, out) = ip(&["addr", "add", "10.251.0.1/24", "dev", &name]);
        assert!(ok, "{out}");
        assert!(ip(&["link", "set", "dev", &name, "up"]).0);
        TestBridge(name)
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", "dev", &self.0]);
    }
}

fn link(bridge: &str, n: u32) -> PodLink {
    let pid = std::process::id();
    PodLink {
        netns: PathBuf::from(format!("/run/netns/atoll-nltest-{pid}-{n}")),
        host_veth: format!("vt{:x}x{n}", pid % 0xffff),
        bridge: bridge.into(),
        addr: Ipv4Addr::new(10, 251, 0, 2 + n as u8),
        prefix: 24,
        gateway: Ipv4Addr::new(10, 251, 0, 1),
        host_up: true,
    }
}

fn ns_name(l: &PodLink) -> String {
    l.netns.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_pod_link_is_what_ip_would_have_made_and_detaching_leaves_nothing() {
    let bridge = TestBridge::new();
    let os = RealOs::new();
    let l = link(&bridge.0, 0);
    os.detach_pod_link(&l.netns, &l.host_veth).unwrap();
    os.attach_pod_link(&l).unwrap();
    let ns = ns_name(&l);
    // `ip netns` still knows it, by the same name and path.
    assert!(ip(&["netns", "list"]).1.contains(&ns));
    let (_, host) = ip(&["-o", "link", "show", "dev", &l.host_veth]);
    assert!(host.contains(&format!("master {}", bridge.0)) && host.contains(",UP"), "{host}");
    let (_, addr) = ip(&["-n", &ns, "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("inet 10.251.0.2/24"), "{addr}");
    let (_, lo) = ip(&["-n", &ns, "-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    let (_, route) = ip(&["-n", &ns, "route", "show", "default"]);
    assert!(route.contains("default via 10.251.0.1 dev eth0"), "{route}");
    // The pod reaches the gateway (the bridge) through its veth.
    let (ok, ping) = ip(&["netns", "exec", &ns, "ping", "-c", "1", "-W", "2", "10.251.0.1"]);
    assert!(ok || ping.contains("No such file"), "{ping}");

    // Made twice is an error, not a silent second namespace (set-up detaches first).
    assert!(os.attach_pod_link(&l).is_err());
    assert!(l.netns.exists(), "a failed attach must not remove what an earlier one made");

    os.detach_pod_link(&l.netns, &l.host_veth).unwrap();
    assert!(!l.netns.exists());
    assert!(!ip(&["link", "show", "dev", &l.host_veth]).0, "host end left");
    assert!(!ip(&["netns", "list"]).1.contains(&ns));
    // Detaching what is gone is fine.
    os.detach_pod_link(&l.netns, &l.host_veth).unwrap();

    // A bridge that does not exist is an error naming it, and nothing is left behind.
    let bad = PodLink { bridge: "atnnobridge".into(), ..link(&bridge.0, 1) };
    let err = os.attach_pod_link(&bad).unwrap_err().to_string();
    assert!(err.contains("atnnobridge"), "{err}");
    assert!(!bad.netns.exists());
}

#[test]
fn a_pooled_link_adopted_under_a_pods_names_is_what_a_fresh_one_would_be() {
    let bridge = TestBridge::new();
    let os = RealOs::new();
    let pooled = PodLink { host_up: false, ..link(&bridge.0, 2) };
    let pod = link(&bridge.0, 3);
    for l in [&pooled, &pod] {
        os.detach_pod_link(&l.netns, &l.host_veth).unwrap();
    }
    os.attach_pod_link(&pooled).unwrap();
    let (_, host) = ip(&["-o", "link", "show", "dev", &pooled.host_veth]);
    assert!(host.contains(&format!("master {}", bridge.0)) && !host.contains(",UP"), "{host}");
    os.adopt_pod_link(&pooled, &pod.netns, &pod.host_veth).unwrap();
    let ns = ns_name(&pod);
    let list = ip(&["netns", "list"]).1;
    assert!(list.contains(&ns) && !list.contains(&ns_name(&pooled)), "{list}");
    assert!(!pooled.netns.exists());
    assert!(!ip(&["link", "show", "dev", &pooled.host_veth]).0, "the pool name is left");
    let (_, host) = ip(&["-o", "link", "show", "dev", &pod.host_veth]);
    assert!(host.contains(&format!("master {}", bridge.0)) && host.contains(",UP"), "{host}");
    // Inside, the pooled address and route, under the pod's namespace name.
    let (_, addr) = ip(&["-n", &ns, "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("inet {}/24", pooled.addr)), "{addr}");
    let (_, route) = ip(&["-n", &ns, "route", "show", "default"]);
    assert!(route.contains("default via 10.251.0.1 dev eth0"), "{route}");
    let (ok, ping) = ip(&["netns", "exec", &ns, "ping", "-c", "1", "-W", "2", "10.251.0.1"]);
    assert!(ok || ping.contains("No such file"), "{ping}");
    os.detach_pod_link(&pod.netns, &pod.host_veth).unwrap();
    assert!(!pod.netns.exists());
    assert!(!ip(&["link", "show", "dev", &pod.host_veth]).0, "host end left");
}

/// The old way, for the comparison printed below: the `ip` commands `net.rs` ran per pod.
fn attach_with_ip(l: &PodLink) {
    let ns = ns_name(l);
    let addr = format!("{}/{}", l.addr, l.prefix);
    let gw = l.gateway.to_string();
    let steps: [&[&str]; 8] = [
        &["netns", "add", &ns],
        &["link", "add", "name", &l.host_veth, "type", "veth", "peer", "name", "eth0", "netns", &ns],
        &["link", "set", "dev", &l.host_veth, "master", &l.bridge, "up"],
        &["-n", &ns, "link", "set", "dev", "lo", "up"],
        &["-n", &ns, "addr", "add", &addr, "dev", "eth0"],
        &["-n", &ns, "link", "set", "dev", "eth0", "up"],
        &["-n", &ns, "route", "add", "default", "via", &gw],
        &["link", "set", "dev", &l.host_veth, "up"],
    ];
    for s in steps {
        let (ok, out) = ip(s);
        assert!(ok, "ip {s:?}: {out}");
    }
}

#[test]
fn netlink_attach_time_next_to_ip_commands() {
    let bridge = TestBridge::new();
    let os = RealOs::new();
    const N: u32 = 20;
    let links: Vec<PodLink> = (0..N).map(|n| link(&bridge.0, 10 + n)).collect();
    let time = |f: &dyn Fn(&PodLink)| -> Duration {
        let began = Instant::now();
        for l in &links {
            f(l);
        }
        let took = began.elapsed();
        for l in &links {
            os.detach_pod_link(&l.netns, &l.host_veth).unwrap();
        }
        took
    };
    let netlink = time(&|l| os.attach_pod_link(l).unwrap());
    let ip_cmds = time(&|l| attach_with_ip(l));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "pod link set-up, mean of {N}: netlink {:.1} ms, ip commands {:.1} ms (load average {})",
        netlink.as_secs_f64() * 1000.0 / f64::from(N),
        ip_cmds.as_secs_f64() * 1000.0 / f64::from(N),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    for l in &links {
        assert!(!Path::new(&l.netns).exists());
    }
}
