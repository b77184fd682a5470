//! `atoll bench pods`: pod startup latency. Creates N pods at once (busybox `sleep`) and
//! measures, from watch events, the time from each pod's create call to the watch showing
//! it Running with every container running (the Kubernetes pod startup SLI, which also
//! excludes image pulls: the image is in the node's store). Against its own all-in-one
//! cluster (`atoll up` in a child process, temporary data folder, the real local node,
//! busybox built first) or an existing one (`--kubeconfig`). `--simulated N` runs the same
//! on N simulated nodes instead: the control plane's share of the latency (API, scheduler,
//! status writes) without containers.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use client::{Client, ListParams, Resource, Scope, WatchEvent, WatchParams};
use serde_json::{Value, json};

use crate::bench::{ms, percentile};

#[derive(clap::Args)]
pub struct PodsBenchArgs {
    /// Pods created at once.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Use this cluster instead of starting one (pods go to the node `--node` names, or
    /// wherever the scheduler puts them).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Pin the pods to this node (label `kubernetes.io/hostname`); default: the started
    /// cluster's local node.
    #[arg(long)]
    node: Option<String>,
    /// Run on this many simulated nodes instead of the real node (control-plane cost only).
    #[arg(long)]
    simulated: Option<usize>,
    /// OCI runtime of the started cluster's node.
    #[arg(long, default_value = "crun")]
    runtime: PathBuf,
    /// Seconds to wait for every pod to run.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// The pods' runtimeClassName (`vm`: each pod in its own microVM sandbox).
    #[arg(long)]
    runtime_class: Option<String>,
    /// Pod networks the started cluster's node keeps made ahead (default: as many as
    /// `--pods`, a node ready for the burst it is measured with); the bench waits until
    /// they are made, as they would be on a node that had been idle.
    #[arg(long)]
    network_pool: Option<usize>,
}

/// `atoll up` in a child process; stopped with SIGINT (so it stops its containers) on drop.
struct Cluster {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The folder goes with the cluster; its log stays for a look at where the time went.
        let kept = std::env::temp_dir().join("atoll-bench-pods-up.log");
        if std::fs::copy(self.log(), &kept).is_ok() {
            eprintln!("the cluster's log: {}", kept.display());
        }
    }
}

fn start_cluster(args: &PodsBenchArgs) -> Result<Cluster> {
    let dir = tempfile::Builder::new().prefix("atoll-bench-pods-").tempdir()?;
    let exe = std::env::current_exe()?;
    let mut up = Command::new(&exe);
    up.args(["up", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path());
    match args.simulated {
        Some(n) => {
            up.args(["--no-agent", "--simulated-nodes", &n.to_string()]);
        }
        None => {
            let built = Command::new(&exe)
                .args(["image", "build-busybox", "--data-dir"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .status()?;
            ensure!(built.success(), "atoll image build-busybox failed (is busybox-static installed?)");
            up.arg("--runtime").arg(&args.runtime);
            up.arg("--network-pool").arg(args.network_pool.unwrap_or(args.pods).to_string());
        }
    }
    let log = std::fs::File::create(dir.path().join("up.log"))?;
    let mut child = up.stdout(Stdio::piped()).stderr(log).spawn()?;
    let mut reader = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let cluster = Cluster { child, dir };
    ensure!(line.starts_with("listening on"), "atoll up did not start; see {}", cluster.log().display());
    if args.simulated.is_none() && args.network_pool.unwrap_or(args.pods) > 0 {
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        let filled = || std::fs::read_to_string(cluster.log()).is_ok_and(|l| l.contains("pod network pool filled"));
        while !filled() {
            ensure!(
                Instant::now() < deadline,
                "the node's network pool was not filled; see {}",
                cluster.log().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(cluster)
}

impl Cluster {
    fn log(&self) -> PathBuf {
        self.dir.path().join("up.log")
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Running, and every container says so.
fn running(pod: &Value) -> bool {
    text(pod, "/status/phase") == "Running"
        && pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.pointer("/state/running").is_some()))
}

fn ready_node(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| text(c, "/type") == "Ready" && text(c, "/status") == "True"))
}

/// Waits until `want` nodes matching `selector` are Ready.
async fn wait_for_nodes(client: &Client, selector: Option<&str>, want: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let params = ListParams { label_selector: selector.map(str::to_string), ..ListParams::default() };
        if let Ok(list) = client.list(&Resource::nodes(), &Scope::tenant("system"), &params).await
            && list.items.iter().filter(|n| ready_node(n)).count() >= want
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{want} ready node(s) never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(args: PodsBenchArgs) -> Result<()> {
    let started = if args.kubeconfig.is_none() { Some(start_cluster(&args)?) } else { None };
    let kubeconfig = match (&args.kubeconfig, &started) {
        (Some(k), _) => k.clone(),
        (None, Some(c)) => c.dir.path().join("admin.kubeconfig"),
        (None, None) => unreachable!("a cluster was started"),
    };
    let pid = started.as_ref().map(|c| c.child.id());
    let result = measure(&args, &kubeconfig, pid).await;
    drop(started);
    result
}

/// CPU time of one process from `/proc/<pid>/stat`: its own (all threads) and that of its
/// children it has reaped, in seconds; its parent's pid.
fn cpu_of(pid: u32) -> Option<(f64, f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // /proc counts in USER_HZ ticks, 100 a second on every Linux ABI.
    let ticks = |a: usize, b: usize| Some((field(a)? + field(b)?) / 100.0);
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    Some((ticks(11, 12)?, ticks(13, 14)?, field(1)? as u32))
}

/// The CPU seconds spent so far by the cluster process (`atoll up`: API server,
/// controllers, scheduler and node agent) and by its container supervisors (`atoll-shim`,
/// its children) with what they ran and reaped (the OCI runtime's processes).
#[derive(Clone, Copy, Default)]
struct CpuSample {
    cluster: f64,
    shims: f64,
    runtime: f64,
}

/// A process's own CPU time in seconds, to the nanosecond: the sum of its threads'
/// `schedstat` (`/proc/<pid>/stat` counts whole 10 ms ticks per process, which rounds a
/// short-lived supervisor's few milliseconds to nothing).
fn precise_cpu(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += stat.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    }
    Some(ns as f64 / 1e9)
}

fn sample_cpu(cluster: u32) -> CpuSample {
    let mut out = CpuSample { cluster: precise_cpu(cluster).unwrap_or(0.0), ..CpuSample::default() };
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Some((own, reaped, parent)) = cpu_of(pid) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        // `atoll-shim ...`, or `atoll shim ...` where no `atoll-shim` is beside `atoll`.
        let mut argv = cmdline.split(|b| *b == 0);
        let program = argv.next().unwrap_or_default();
        let is_shim = program.ends_with(b"/atoll-shim") || argv.next() == Some(b"shim".as_slice());
        if parent == cluster && is_shim {
            out.shims += precise_cpu(pid).unwrap_or(own);
            out.runtime += reaped;
        }
    }
    out
}

/// The whole machine's user and system CPU seconds so far (`/proc/stat`: every process's,
/// other developers' too, and the kernel's own threads), for the kernel's share of a run.
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<f64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq: user + nice, system + irq + softirq.
    Some(((f.first()? + f.get(1)?) / 100.0, (f.get(2)? + f.get(5)? + f.get(6)?) / 100.0))
}

/// The file system a folder lives on, as `/proc/self/mountinfo` says: type and source of
/// the deepest mount holding it.
fn file_system_of(mountinfo: &str, dir: &Path) -> Option<(String, String)> {
    let mut best: Option<(usize, String, String)> = None;
    for line in mountinfo.lines() {
        // ID parent major:minor root mount-point options [optional...] - type source options
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let Some(point) = left.split(' ').nth(4) else { continue };
        // Spaces and other specials in paths are escaped as octal (`\040`).
        let point = point.replace("\\040", " ");
        let mut right = right.split(' ');
        let (Some(fstype), Some(source)) = (right.next(), right.next()) else { continue };
        if dir.starts_with(&point) && best.as_ref().is_none_or(|(len, ..)| point.len() >= *len) {
            best = Some((point.len(), fstype.to_string(), source.to_string()));
        }
    }
    best.map(|(_, t, s)| (t, s))
}

/// A warning when the cluster's data folder is on ext4 without a journal: there every new
/// file or folder scans past the inodes freed in the last 5-10 minutes (ext4's
/// `recently_deleted`), so each run's clean-up makes the next run's pod starts dearer.
fn data_folder_note(dir: &Path) -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (fstype, source) = file_system_of(&mountinfo, dir)?;
    let device = source.strip_prefix("/dev/")?;
    let journalled = Path::new("/proc/fs/jbd2").join(format!("{device}-8")).exists();
    (fstype == "ext4" && !journalled).then(|| {
        format!(
            "note: the data folder {} is on ext4 without a journal ({source}): new files there scan past every \
             inode freed in the last 5-10 minutes, so back-to-back runs slow each other (TMPDIR picks another \
             folder)",
            dir.display()
        )
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn measure(args: &PodsBenchArgs, kubeconfig: &Path, cluster_pid: Option<u32>) -> Result<()> {
    let own = cluster_pid.is_some();
    let config = client::Config::from_kubeconfig(kubeconfig, None)?;
    let client = Client::new(config)?;
    let selector = match (&args.node, args.simulated) {
        (Some(node), _) => json!({"kubernetes.io/hostname": node}),
        (None, Some(_)) => json!({"atoll.io/simulated": "true"}),
        (None, None) if own => json!({"kubernetes.io/hostname": crate::agent::hostname()}),
        (None, None) => json!({}),
    };
    match args.simulated {
        Some(n) if own => wait_for_nodes(&client, Some("atoll.io/simulated=true"), n).await?,
        _ if own => wait_for_nodes(&client, None, 1).await?,
        _ => {}
    }

    let ns = format!("bench-pods-{}", std::process::id());
    client
        .create(
            &Resource::namespaces(),
            &Scope::own(),
            &json!({"apiVersion": "v1", "kind": "Namespace",
                                                                "metadata": {"name": ns}}),
        )
        .await?;
    let scope = Scope::own().in_namespace(&ns);
    let listed = client.list(&Resource::pods(), &scope, &ListParams::default()).await?;
    let params = WatchParams { resource_version: Some(listed.resource_version), ..WatchParams::default() };
    let mut watch = client.watch(&Resource::pods(), &scope, &params).await?;

    let names: Vec<String> = (0..args.pods).map(|i| format!("p{i}")).collect();
    let load_before = load_average();
    let cpu_before = cluster_pid.map(sample_cpu);
    let machine_before = machine_cpu();
    let begin = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    for name in &names {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                         "spec": {"nodeSelector": selector, "terminationGracePeriodSeconds": 1,
                                  "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "Never",
                                                  "command": ["sleep", "3600"]}]}});
        if let Some(class) = &args.runtime_class {
            pod["spec"]["runtimeClassName"] = json!(class);
        }
        let (client, scope, name) = (client.clone(), scope.clone(), name.clone());
        creates.spawn(async move {
            let sent = Instant::now();
            client.create(&Resource::pods(), &scope, &pod).await.map(|_| (name, sent))
        });
    }
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut running_at: HashMap<String, Instant> = HashMap::new();
    let deadline = begin + Duration::from_secs(args.timeout);
    while running_at.len() < args.pods {
        let event = tokio::select! {
            Some(done) = creates.join_next() => {
                let (name, sent) = done??;
                sent_at.insert(name, sent);
                continue;
            }
            event = tokio::time::timeout_at(deadline.into(), watch.next()) => event,
        };
        let Ok(event) = event else {
            bail!("only {} of {} pods ran within {} s", running_at.len(), args.pods, args.timeout);
        };
        match event? {
            Some(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) if running(&pod) => {
                running_at.entry(text(&pod, "/metadata/name").to_string()).or_insert_with(Instant::now);
            }
            Some(WatchEvent::Error(s)) => bail!("the watch failed: {}", s.message),
            None => bail!("the server ended the watch"),
            _ => {}
        }
    }
    let total = begin.elapsed();
    let cpu_after = cluster_pid.map(sample_cpu);
    let machine_after = machine_cpu();
    while let Some(done) = creates.join_next().await {
        let (name, sent) = done??;
        sent_at.insert(name, sent);
    }
    let mut latencies: Vec<Duration> =
        names.iter().filter_map(|n| Some(running_at.get(n)?.saturating_duration_since(*sent_at.get(n)?))).collect();
    latencies.sort();
    let target = match args.simulated {
        Some(n) => format!("{n} simulated nodes"),
        None => "the real node".to_string(),
    };
    println!(
        "pod startup, {} pods at once on {target}: create -> Running p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
         all running after {:.0} ms",
        args.pods,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        ms(total),
    );
    println!("load average (1, 5, 15 min) before: {load_before}, after: {}", load_average());
    if own && let Some(note) = kubeconfig.parent().and_then(data_folder_note) {
        println!("{note}");
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        // Shims are new, so all of theirs is this run's; the cluster process's is the change.
        println!(
            "CPU seconds until all ran: cluster process (API server, controllers, scheduler, agent) {:.2}, \
             container supervisors (atoll-shim) {:.2}, OCI runtime (reaped by them; whole 10 ms ticks per \
             process, so a lower bound) {:.2}",
            after.cluster - before.cluster,
            after.shims,
            after.runtime,
        );
    }

    if let (Some(before), Some(after)) = (machine_before, machine_after) {
        println!(
            "CPU seconds until all ran, whole machine (/proc/stat; other processes included): user {:.2}, system {:.2}",
            after.0 - before.0,
            after.1 - before.1,
        );
    }

    // Clean up and wait for it, so a cluster we started stops with nothing left to stop
    // (the agent stops its pods in parallel; its own shutdown goes one pod at a time).
    let params = client::DeleteParams::default();
    client.delete(&Resource::namespaces(), &Scope::own(), &ns, &params).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let left = client.list(&Resource::pods(), &scope, &ListParams::default()).await?.items.len();
        if left == 0 {
            break;
        }
        ensure!(Instant::now() < deadline, "{left} pods were still being deleted after {} s", args.timeout);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_mount_holding_a_folder_names_its_file_system() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 0:25 / /tmp rw - tmpfs tmpfs rw
31 22 7:0 / /mnt/j\\040b rw,relatime - ext4 /dev/loop0 rw
32 22 0:26 / /tm rw - tmpfs tmpfs rw
";
        let fs = |p: &str| file_system_of(mountinfo, Path::new(p));
        assert_eq!(fs("/var/lib/atoll"), Some(("ext4".into(), "/dev/vda".into())));
        assert_eq!(fs("/tmp/atoll-bench-pods-x"), Some(("tmpfs".into(), "tmpfs".into())));
        assert_eq!(fs("/mnt/j b/x"), Some(("ext4".into(), "/dev/loop0".into())));
        // A mount point is a whole path component, not a string prefix.
        assert_eq!(fs("/tmx"), Some(("ext4".into(), "/dev/vda".into())));
        assert_eq!(file_system_of("garbage", Path::new("/")), None);
    }
}
