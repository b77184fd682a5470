//! The Node object and its Lease: what this machine is (capacity, addresses, software),
//! registered once and kept fresh.
//!
//! Facts are read through [`Os`] (files under `/proc` and `/etc`, `ip` and the runtime's
//! `--version`), so they are unit-tested with the fake. The heartbeat renews the Lease
//! `kube-node-lease/<node>` every [`LEASE_RENEW`] and rewrites the Node's status (Ready
//! with fresh heartbeat times), as the kubelet does.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, SystemTime};

use client::{Client, Resource, Scope};
use serde_json::{Value, json};

use crate::os::Os;
use crate::timefmt::rfc3339_nano;

pub const LEASE_RENEW: Duration = Duration::from_secs(10);
pub const LEASE_DURATION_SECONDS: i64 = 40;
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Kubernetes' default for a kubelet.
pub const MAX_PODS: u32 = 110;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("API: {0}")]
    Api(#[from] client::Error),
}

/// What the Node's status says about this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineFacts {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub hostname: String,
    /// The first global IPv4 address, else loopback.
    pub internal_ip: String,
    pub kernel: String,
    pub os_image: String,
    pub architecture: String,
    /// `crun://1.8.1`.
    pub runtime_version: String,
    pub machine_id: String,
    /// The port the agent serves logs and exec on (0: none), for `daemonEndpoints`.
    pub agent_port: u16,
}

fn text(os: &dyn Os, path: &str) -> String {
    os.read_file(Path::new(path))
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default()
}

/// Reads the machine's facts; anything unreadable is left empty (or 1 CPU) rather than
/// failing registration.
pub fn machine_facts(os: &dyn Os, runtime: &Path) -> MachineFacts {
    let cpuinfo = text(os, "/proc/cpuinfo");
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count().max(1) as u32;
    let meminfo = text(os, "/proc/meminfo");
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let os_release = text(os, "/etc/os-release");
    let os_image = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
    let internal_ip = os
        .run(Path::new("ip"), &args(&["-4", "-o", "addr", "show", "scope", "global"]))
        .ok()
        .filter(|o| o.success)
        .and_then(|o| parse_first_ipv4(&o.stdout))
        .unwrap_or_else(|| "127.0.0.1".into());
    let runtime_name = runtime.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let version = os
        .run(runtime, &args(&["--version"]))
        .ok()
        .and_then(|o| o.stdout.lines().next().and_then(|l| l.split_whitespace().last()).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    MachineFacts {
        cpus,
        memory_bytes: memory_kib * 1024,
        hostname: text(os, "/proc/sys/kernel/hostname"),
        internal_ip,
        kernel: text(os, "/proc/sys/kernel/osrelease"),
        os_image,
        architecture: crate::images::host_platform().1.to_string(),
        runtime_version: format!("{runtime_name}://{version}"),
        machine_id: text(os, "/etc/machine-id"),
        agent_port: 0,
    }
}

/// The address of `ip -4 -o addr show` output's first line (`2: eth0 inet 10.0.0.5/24 ...`).
fn parse_first_ipv4(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        words.position(|w| w == "inet")?;
        words.next()?.split('/').next().map(str::to_string)
    })
}

pub fn nodes() -> Resource {
    Resource::new("", "v1", "nodes", false)
}

pub fn leases() -> Resource {
    Resource::new("coordination.k8s.io", "v1", "leases", true)
}

/// `metav1.MicroTime`: microseconds, as Leases carry.
pub fn micro_time(t: SystemTime) -> String {
    let s = rfc3339_nano(t);
    // 2026-11-24T00:00:54.123456789Z -> 2026-11-24T00:00:54.123456Z
    format!("{}Z", &s[..s.len() - 4])
}

/// Seconds-precision time, as conditions carry.
pub fn seconds_time(t: SystemTime) -> String {
    let s = rfc3339_nano(t);
    format!("{}Z", &s[..19])
}

/// The Node's status for these facts; `since` is when Ready last changed (this agent's start).
pub fn node_status(facts: &MachineFacts, now: SystemTime, since: SystemTime) -> Value {
    let resources = json!({
        "cpu": facts.cpus.to_string(),
        "memory": format!("{}Ki", facts.memory_bytes / 1024),
        "pods": MAX_PODS.to_string(),
        "ephemeral-storage": "0",
    });
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": seconds_time(now), "lastTransitionTime": seconds_time(since)})
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": facts.internal_ip},
            {"type": "Hostname", "address": facts.hostname},
        ],
        "nodeInfo": {
            "machineID": facts.machine_id,
            "systemUUID": facts.machine_id,
            "bootID": "",
            "kernelVersion": facts.kernel,
            "osImage": facts.os_image,
            "containerRuntimeVersion": facts.runtime_version,
            "kubeletVersion": format!("atoll-{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": facts.architecture,
        },
        "conditions": [
            condition("MemoryPressure", "False", "AgentHasSufficientMemory", "atoll agent has sufficient memory"),
            condition("DiskPressure", "False", "AgentHasNoDiskPressure", "atoll agent has no disk pressure"),
            condition("PIDPressure", "False", "AgentHasSufficientPID", "atoll agent has sufficient PIDs"),
            condition("Ready", "True", "AgentReady", "atoll agent is posting ready status"),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": facts.agent_port}},
    })
}

/// Creates the Node if it is missing, then writes its status.
pub async fn register(client: &Client, name: &str, facts: &MachineFacts, since: SystemTime) -> Result<(), NodeError> {
    let scope = Scope::tenant("system");
    let node = json!({"apiVersion": "v1", "kind": "Node",
    "metadata": {"name": name, "labels": {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": facts.architecture,
    }}});
    match client.create(&nodes(), &scope, &node).await {
        Ok(_) => tracing::info!(node = name, "registered"),
        Err(e) if e.is_already_exists() => {}
        Err(e) => return Err(e.into()),
    }
    update_status(client, name, facts, since).await
}

/// Rewrites the Node's status (fresh heartbeat times), retrying once on a conflict.
pub async fn update_status(
    client: &Client,
    name: &str,
    facts: &MachineFacts,
    since: SystemTime,
) -> Result<(), NodeError> {
    let scope = Scope::tenant("system");
    let mut attempts = 0;
    loop {
        let mut node = client.get(&nodes(), &scope, name).await?;
        node["status"] = node_status(facts, SystemTime::now(), since);
        match client.replace_subresource(&nodes(), &scope, name, "status", &node).await {
            Ok(_) => return Ok(()),
            // Someone else wrote the Node meanwhile (labels, taints): read it again.
            Err(e) if e.is_conflict() && attempts < 3 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Renews (or creates) the node's Lease.
pub async fn renew_lease(client: &Client, name: &str) -> Result<(), NodeError> {
    let scope = Scope::tenant("system").in_namespace(LEASE_NAMESPACE);
    let now = micro_time(SystemTime::now());
    match client.get(&leases(), &scope, name).await {
        Ok(mut lease) => {
            lease["spec"]["holderIdentity"] = json!(name);
            lease["spec"]["leaseDurationSeconds"] = json!(LEASE_DURATION_SECONDS);
            lease["spec"]["renewTime"] = json!(now);
            client.replace(&leases(), &scope, name, &lease).await?;
        }
        Err(e) if e.is_not_found() => {
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                               "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                               "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                                        "acquireTime": now, "renewTime": now}});
            client.create(&leases(), &scope, &lease).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Renews the Lease and the Node's status every [`LEASE_RENEW`] until `stop` resolves;
/// failures are logged and retried at the next tick (the API server may be restarting).
pub async fn heartbeat(
    client: Client,
    name: String,
    facts: MachineFacts,
    since: SystemTime,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(LEASE_RENEW);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = renew_lease(&client, &name).await {
            tracing::warn!(node = %name, error = %e, "renewing the node lease");
        }
        if let Err(e) = update_status(&client, &name, &facts, since).await {
            tracing::warn!(node = %name, error = %e, "updating the node status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::FakeOs;

    #[test]
    fn facts_come_from_proc_and_etc() {
        let os = FakeOs::new("", vec![]);
        os.put_file(Path::new("/proc/cpuinfo"), b"processor\t: 0\nmodel\t: x\n\nprocessor\t: 1\n");
        os.put_file(Path::new("/proc/meminfo"), b"MemTotal:        4028520 kB\nMemFree: 1 kB\n");
        os.put_file(Path::new("/etc/os-release"), b"NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n");
        os.put_file(Path::new("/proc/sys/kernel/hostname"), b"vm\n");
        os.put_file(Path::new("/proc/sys/kernel/osrelease"), b"6.1.0\n");
        let f = machine_facts(&os, Path::new("crun"));
        assert_eq!((f.cpus, f.memory_bytes), (2, 4028520 * 1024));
        assert_eq!(f.os_image, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!((f.hostname.as_str(), f.kernel.as_str()), ("vm", "6.1.0"));
        let status = node_status(&f, SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH);
        assert_eq!(status["capacity"]["memory"], "4028520Ki");
        assert_eq!(status["allocatable"]["pods"], "110");
        assert_eq!(status["conditions"][3]["type"], "Ready");
        assert_eq!(status["conditions"][3]["lastHeartbeatTime"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn parses_ip_output_and_formats_times() {
        let out = "2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever\n";
        assert_eq!(parse_first_ipv4(out).as_deref(), Some("192.0.2.2"));
        assert_eq!(parse_first_ipv4(""), None);
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_478_454, 123_456_789);
        assert_eq!(micro_time(t), "2026-11-24T00:00:54.123456Z");
        assert_eq!(seconds_time(t), "2026-11-24T00:00:54Z");
    }
}
