//! `kubectl logs`, `exec`, `attach` and `cp` on the all-in-one cluster, as a tenant's user,
//! with kubectl 1.27 (SPDY/3.1), 1.30 and 1.33 (WebSocket v5): the API server authorizes
//! and proxies to the node agent, which only talks to the API server.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::server::{Kubectl, Proc, kubectl_binary, start_up, tenant_admins_json};

const MINORS: [u32; 3] = [27, 30, 33];

struct Cluster {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    bridge: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = Command::new("kill").args(["-INT", &p.0.id().to_string()]).status();
            // Shells as PID 1 ignore SIGTERM: the agent waits out its 10 s exit grace per pod.
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline && matches!(p.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = Command::new("ip").args(["link", "del", "dev", &self.bridge]).status();
        let _ = Command::new("nft").args(["delete", "table", "ip", &format!("atoll-{}", self.bridge)]).status();
    }
}

fn kubeconfig_for(dir: &Path, tenant: &str, user: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("{user}@{tenant}.kubeconfig"));
    let status = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["admin", "kubeconfig", "--tenant", tenant, "--user", user, "--data-dir"])
        .arg(dir)
        .arg("--output")
        .arg(&path)
        .status()?;
    ensure!(status.success(), "atoll admin kubeconfig failed");
    Ok(path)
}

fn kubectl(minor: u32, kubeconfig: &Path) -> Result<Kubectl> {
    Ok(Kubectl { bin: kubectl_binary(minor)?, kubeconfig: kubeconfig.to_path_buf(), cache: tempfile::tempdir()? })
}

fn start(node: &str) -> Result<Cluster> {
    let dir = tempfile::tempdir()?;
    let built = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["image", "build-busybox", "--data-dir"])
        .arg(dir.path())
        .output()?;
    ensure!(built.status.success(), "atoll image build-busybox: {}", String::from_utf8_lossy(&built.stderr));
    let pid = std::process::id();
    let (bridge, cidr) = (format!("ats{pid}"), format!("10.{}.{}.0/24", 150 + (pid >> 8) % 50, pid % 256));
    let up = start_up(dir.path(), &["--node-name", node, "--bridge", &bridge, "--pod-cidr", &cidr])?;
    Ok(Cluster { proc: Some(up), dir, bridge })
}

/// A cluster whose node `node` is Ready, with the tenants `acme` (administrator `ann`) and `globex` (`gus`): the
/// cluster, the cluster administrator's kubectl 1.33 and ann's, once ann's default ServiceAccount exists.
fn start_with_tenants(node: &str) -> Result<(Cluster, Kubectl, Kubectl)> {
    let cluster = start(node)?;
    let dir = cluster.dir.path();
    let admin = kubectl(33, &dir.join("admin.kubeconfig"))?;
    admin.eventually(&["get", "node", node])?;
    admin.ok(&["wait", &format!("node/{node}"), "--for=condition=Ready", "--timeout=30s"])?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["ann"])))?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("globex", &["gus"])))?;
    let ann = kubectl(33, &kubeconfig_for(dir, "acme", "ann")?)?;
    ann.eventually(&["get", "namespace", "default"])?;
    ann.eventually(&["get", "serviceaccount", "default"])?;
    Ok((cluster, admin, ann))
}

fn pod(name: &str, script: &str, restart: &str) -> String {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                                 "command": ["sh", "-c", script]}]}})
    .to_string()
}

/// Reads `child`'s stdout lines until `want` says enough (or 20 s pass); returns them with
/// the time each arrived.
fn read_lines_until(
    child: &mut std::process::Child,
    want: impl Fn(&[String]) -> bool,
) -> Result<Vec<(Instant, String)>> {
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got: Vec<(Instant, String)> = Vec::new();
    while !want(&got.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => got.push(l),
            Err(_) => bail!("only got {:?}", got.iter().map(|(_, l)| l).collect::<Vec<_>>()),
        }
    }
    Ok(got)
}

fn exec_checks(k: &Kubectl, minor: u32, work: &Path) -> Result<()> {
    // Exit codes and output.
    let out = k.run(&["exec", "shell", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"], None)?;
    ensure!(
        out.status.code() == Some(3),
        "1.{minor} exec exit: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(String::from_utf8_lossy(&out.stdout) == "hi\n", "1.{minor}: {:?}", out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("oops") && stderr.contains("command terminated with exit code 3"), "1.{minor}: {stderr}");
    ensure!(k.ok(&["exec", "shell", "--", "echo", "plain"])? == "plain\n");
    // Stdin.
    let echoed = k.ok_with(&["exec", "-i", "shell", "--", "sh", "-c", "cat; echo done"], Some("hello stdin\n"))?;
    ensure!(echoed == "hello stdin\ndone\n", "1.{minor} exec -i: {echoed:?}");
    // A terminal: kubectl under script(1), so its own stdin is a terminal too.
    let inner = format!(
        "{} --kubeconfig {} --cache-dir {} exec -it shell -- sh -c 'test -t 0 && test -t 1 && echo on-a-tty; exit 4'",
        k.bin.display(),
        k.kubeconfig.display(),
        k.cache.path().display()
    );
    let tty = Command::new("script").args(["-qefc", &inner, "/dev/null"]).stdin(Stdio::null()).output()?;
    let text = String::from_utf8_lossy(&tty.stdout);
    ensure!(text.contains("on-a-tty"), "1.{minor} exec -it: {text:?} {}", String::from_utf8_lossy(&tty.stderr));
    ensure!(tty.status.code() == Some(4), "1.{minor} exec -it exit: {:?} {text:?}", tty.status);
    // cp both ways (tar through exec).
    let local = work.join(format!("in-{minor}.txt"));
    let body = format!("copied by kubectl 1.{minor}\n").repeat(5000);
    std::fs::write(&local, &body)?;
    let remote = format!("shell:/tmp/cp-{minor}.txt");
    k.ok(&["cp", local.to_str().context("path")?, &remote])?;
    ensure!(k.ok(&["exec", "shell", "--", "cat", &format!("/tmp/cp-{minor}.txt")])? == body, "1.{minor} cp in");
    let back = work.join(format!("back-{minor}.txt"));
    k.ok(&["cp", &remote, back.to_str().context("path")?])?;
    ensure!(std::fs::read_to_string(&back)? == body, "1.{minor} cp out");
    Ok(())
}

fn log_checks(k: &Kubectl, minor: u32) -> Result<()> {
    let all = k.ok(&["logs", "logger"])?;
    ensure!(all.starts_with("line 1\nline 2\nline 3\n"), "1.{minor} logs: {all:?}");
    ensure!(k.ok(&["logs", "logger", "-c", "main", "--tail=1"])?.lines().count() == 1);
    ensure!(k.ok(&["logs", "logger", "--since=1h"])?.starts_with("line 1\n"));
    let stamped = k.ok(&["logs", "logger", "--timestamps", "--tail=1"])?;
    ensure!(stamped.starts_with("20") && stamped.contains("Z "), "1.{minor} --timestamps: {stamped:?}");
    ensure!(k.ok(&["logs", "logger", "--limit-bytes=4"])? == "line");
    let bad = k.fails(&["logs", "logger", "-c", "nope"])?;
    ensure!(bad.contains("container nope is not valid for pod logger"), "1.{minor}: {bad}");
    // -f: ticks arrive as they are written, about a second apart.
    let mut follow =
        Proc(k.command(&["logs", "-f", "--tail=1", "logger"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?);
    let got = read_lines_until(&mut follow.0, |l| l.iter().filter(|x| x.starts_with("tick")).count() >= 3)?;
    let ticks: Vec<&(Instant, String)> = got.iter().filter(|(_, l)| l.starts_with("tick")).collect();
    let gap = ticks[2].0 - ticks[1].0;
    ensure!(gap > Duration::from_millis(300), "1.{minor} logs -f delivered ticks {gap:?} apart: not streamed");
    drop(follow);
    // --previous: the crashed attempt's log.
    let previous = k.ok(&["logs", "crasher", "--previous"])?;
    ensure!(previous.contains("crash attempt"), "1.{minor} --previous: {previous:?}");
    // attach: what the container writes from now on.
    let mut attach = Proc(k.command(&["attach", "talker"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?);
    read_lines_until(&mut attach.0, |l| l.iter().filter(|x| x.starts_with("talk")).count() >= 2)?;
    Ok(())
}

/// Runs `kubectl exec POD -- true` `n` times; the median wall time.
fn exec_latency(k: &Kubectl, n: usize) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        k.ok(&["exec", "shell", "--", "true"])?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[n / 2])
}

#[test]
fn logs_exec_attach_and_cp_through_the_api_server() -> Result<()> {
    let node = "streaming-e2e-node";
    let (cluster, admin, ann) = start_with_tenants(node)?;
    let dir = cluster.dir.path();

    let logger = "for i in 1 2 3; do echo line $i; done; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done";
    ann.ok_with(&["create", "-f", "-"], Some(&pod("logger", logger, "Always")))?;
    ann.ok_with(&["create", "-f", "-"], Some(&pod("shell", "sleep 100000", "Always")))?;
    ann.ok_with(&["create", "-f", "-"], Some(&pod("talker", "while true; do echo talk; sleep 0.3; done", "Always")))?;
    ann.ok_with(&["create", "-f", "-"], Some(&pod("crasher", "echo crash attempt; sleep 1; exit 1", "Always")))?;
    // stdin for attach: one pod per kubectl (stdinOnce: the first attach's end closes it).
    for minor in MINORS {
        let reader = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("reader-{minor}")},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                                     "stdin": true, "stdinOnce": true,
                                     "command": ["sh", "-c", "while read l; do echo got $l; done; echo stdin closed"]}]}});
        ann.ok_with(&["create", "-f", "-"], Some(&reader.to_string()))?;
    }
    for p in ["logger", "shell", "talker", "reader-27", "reader-30", "reader-33"] {
        ann.ok(&["wait", &format!("pod/{p}"), "--for=condition=Ready", "--timeout=60s"])?;
    }
    // A container that never ran has no log to show, and says why.
    let noimage = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "noimage"},
        "spec": {"containers": [{"name": "main", "image": "no-such-image", "imagePullPolicy": "Never"}]}});
    ann.ok_with(&["create", "-f", "-"], Some(&noimage.to_string()))?;
    ann.ok(&[
        "wait",
        "pod/noimage",
        "--for=jsonpath={.status.containerStatuses[0].state.waiting.reason}=ErrImageNeverPull",
        "--timeout=30s",
    ])?;
    let waiting = ann.fails(&["logs", "noimage"])?;
    ensure!(waiting.contains("is waiting to start: ErrImageNeverPull"), "{waiting}");
    // Without a restart there is no previous attempt: asked of a pod that never ends (the
    // crasher may already have restarted by now on a loaded machine: it crashes after 1 s and
    // comes back 10 s later).
    let none = ann.fails(&["logs", "shell", "--previous"])?;
    ensure!(none.contains("previous terminated container"), "{none}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ann.ok(&["get", "pod", "crasher", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"])?.trim()
        == "0"
    {
        ensure!(Instant::now() < deadline, "the crasher never restarted");
        std::thread::sleep(Duration::from_millis(500));
    }

    let work = tempfile::tempdir()?;
    for minor in MINORS {
        let k = kubectl(minor, &ann.kubeconfig)?;
        log_checks(&k, minor)?;
        exec_checks(&k, minor, work.path())?;
        let attached = k.ok_with(&["attach", "-i", &format!("reader-{minor}")], Some("hello\n"))?;
        ensure!(attached.contains("got hello\nstdin closed\n"), "1.{minor} attach -i: {attached:?}");
    }

    // kubectl 1.30+ falls back to SPDY when told not to use WebSockets (or when they fail).
    let spdy = kubectl(33, &ann.kubeconfig)?
        .command(&["exec", "-i", "shell", "--", "sh", "-c", "cat; exit 5"])
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut spdy = spdy;
    std::io::Write::write_all(&mut spdy.stdin.take().context("stdin")?, b"over spdy\n")?;
    let spdy = spdy.wait_with_output()?;
    ensure!(spdy.status.code() == Some(5) && spdy.stdout == b"over spdy\n", "1.33 over SPDY: {spdy:?}");

    // Rights are the API server's: a viewer reads logs but may not exec or attach.
    ann.ok(&["create", "rolebinding", "vic-views", "--clusterrole=view", "--user=vic"])?;
    let vic = kubectl(33, &kubeconfig_for(dir, "acme", "vic")?)?;
    vic.eventually(&["logs", "logger", "--tail=1"])?;
    for minor in MINORS {
        let v = kubectl(minor, &vic.kubeconfig)?;
        let refused = v.fails(&["exec", "shell", "--", "true"])?;
        ensure!(refused.contains("forbidden") && refused.contains("pods/exec"), "1.{minor} vic: {refused}");
        let refused = v.fails(&["attach", "talker"])?;
        ensure!(refused.contains("forbidden"), "1.{minor} vic attach: {refused}");
    }
    // Another tenant's user cannot even tell the pod exists.
    let gus = kubectl(33, &kubeconfig_for(dir, "globex", "gus")?)?;
    gus.eventually(&["get", "namespace", "default"])?;
    for args in [&["exec", "shell", "--", "true"][..], &["logs", "logger"][..], &["attach", "talker"][..]] {
        let refused = gus.fails(args)?;
        ensure!(refused.contains("pods \"") && refused.contains("not found"), "gus {args:?}: {refused}");
        ensure!(!refused.contains("acme"), "gus learns of acme: {refused}");
    }
    for tenant_url in [
        "/api/v1/tenants/acme/namespaces/default/pods/logger/log",
        "/tenants/acme/api/v1/namespaces/default/pods/logger/log",
    ] {
        let refused = gus.fails(&["get", "--raw", tenant_url])?;
        ensure!(refused.contains("Forbidden") || refused.contains("forbidden"), "gus raw: {refused}");
    }

    // The agent's port itself: no client certificate fails the handshake; a CA-signed one
    // that is not the API server's is refused.
    let port = admin.ok(&["get", "node", node, "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"])?;
    ensure!(port.parse::<u16>().is_ok_and(|p| p > 0), "port {port:?}");
    let url = format!("https://127.0.0.1:{port}/containerLogs/x/main");
    let bare = Command::new("curl").args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url]).output()?;
    ensure!(!bare.status.success() || String::from_utf8_lossy(&bare.stdout) == "000", "no cert: {bare:?}");
    let (cert, key) = (work.path().join("ann.crt"), work.path().join("ann.key"));
    let text = std::fs::read_to_string(&ann.kubeconfig)?;
    let field = |name: &str| -> Result<Vec<u8>> {
        let b64 = text.lines().find_map(|l| l.trim().strip_prefix(name)).context("field")?.trim().to_string();
        let out = Command::new("base64").arg("-d").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let mut out = out;
        std::io::Write::write_all(&mut out.stdin.take().context("stdin")?, b64.as_bytes())?;
        let mut decoded = Vec::new();
        out.stdout.take().context("stdout")?.read_to_end(&mut decoded)?;
        out.wait()?;
        Ok(decoded)
    };
    std::fs::write(&cert, field("client-certificate-data:")?)?;
    std::fs::write(&key, field("client-key-data:")?)?;
    let as_ann = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(&url)
        .output()?;
    ensure!(String::from_utf8_lossy(&as_ann.stdout) == "403", "a user's cert at the agent: {as_ann:?}");

    // The figure BENCHMARKS.md quotes.
    for minor in [27, 33] {
        let median = exec_latency(&kubectl(minor, &ann.kubeconfig)?, 10)?;
        eprintln!("kubectl 1.{minor} exec -- true: median {median:?} over 10 runs");
    }
    // Pods go with their own short grace period, and leave nothing running behind.
    ann.ok(&["delete", "pods", "--all", "--grace-period=1", "--timeout=60s"])?;
    drop(cluster);
    Ok(())
}

/// kubectl on a terminal of its own: `script(1)` runs it on a pseudo-terminal whose input
/// is what the test types and whose output the test reads.
struct Terminal {
    child: Proc,
    input: std::process::ChildStdin,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    /// `shell` runs under script(1) on the terminal (its size set first: 40 rows, 100 columns).
    fn start(shell: &str) -> Result<Terminal> {
        let inner = format!("stty rows 40 cols 100; {shell}");
        let mut child = Proc(
            Command::new("script")
                .args(["-qefc", &inner, "/dev/null"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?,
        );
        let input = child.0.stdin.take().context("stdin")?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for mut out in [
            Box::new(child.0.stdout.take().context("stdout")?) as Box<dyn Read + Send>,
            Box::new(child.0.stderr.take().context("stderr")?),
        ] {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Ok(Terminal { child, input, seen })
    }

    fn text(&self) -> String {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn wait_for(&self, want: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while !self.text().contains(want) {
            ensure!(Instant::now() < deadline, "no {want:?} on the terminal: {:?}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn send(&mut self, text: &str) -> Result<()> {
        std::io::Write::write_all(&mut self.input, text.as_bytes())?;
        Ok(std::io::Write::flush(&mut self.input)?)
    }

    /// Types `line` every two seconds until `want` shows (typed text is echoed, so `want`
    /// must be something only running `line` prints).
    fn type_until(&mut self, line: &str, want: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.send(&format!("{line}\r"))?;
            if self.wait_for(want, Duration::from_secs(2)).is_ok() {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "{line:?} never printed {want:?}: {:?}", self.text());
        }
    }

    fn exit_code(mut self, within: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.0.try_wait()? {
                return Ok(s.code());
            }
            ensure!(Instant::now() < deadline, "kubectl still running: {:?}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn kubectl_line(k: &Kubectl, args: &str) -> String {
    format!(
        "{} --kubeconfig {} --cache-dir {} {args}",
        k.bin.display(),
        k.kubeconfig.display(),
        k.cache.path().display()
    )
}

/// The marker `stty size` prints in the container: `S<rows>x<cols>`.
const SIZE: &str = "echo S$(stty size | tr ' ' x)";

#[test]
fn tty_containers_run_attach_exec_and_resize() -> Result<()> {
    let node = "tty-e2e-node";
    let (cluster, _admin, ann) = start_with_tenants(node)?;

    // `kubectl run -it --rm`: a shell on a terminal; the window's size reaches it, at the
    // start and when the window changes (the background `stty` resizes kubectl's terminal,
    // which signals kubectl); `exit` ends it and --rm deletes the pod.
    for minor in [27, 33] {
        let k = kubectl(minor, &ann.kubeconfig)?;
        let pod = format!("run-{minor}");
        let run = kubectl_line(
            &k,
            &format!("run -it --rm {pod} --image=busybox --image-pull-policy=IfNotPresent --restart=Never -- sh"),
        );
        let mut term = Terminal::start(&format!("(sleep 8; stty rows 50 cols 130) </dev/tty & exec {run}"))?;
        term.wait_for("try pressing enter", Duration::from_secs(90))?;
        term.type_until("echo T$((6*7)); tty", "T42")?;
        term.wait_for("/dev/pts/0", Duration::from_secs(5))?;
        term.type_until(SIZE, "S40x100")?;
        term.type_until(SIZE, "S50x130")?;
        term.send("exit\r")?;
        let code = term.exit_code(Duration::from_secs(60))?;
        ensure!(code == Some(0), "1.{minor} run -it exit {code:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while ann.run(&["get", "pod", &pod], None)?.status.success() {
            ensure!(Instant::now() < deadline, "1.{minor}: --rm left pod {pod}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    // A tty pod: `exec -it` into it gets a terminal of its own; `attach -it` reaches the
    // container's terminal (typed keys, output live, window size), and its shell's `exit`
    // ends the attach.
    for minor in [27, 30, 33] {
        let pod = format!("term-{minor}");
        let term_pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                                     "stdin": true, "tty": true, "command": ["sh"]}]}});
        ann.ok_with(&["create", "-f", "-"], Some(&term_pod.to_string()))?;
        ann.ok(&["wait", &format!("pod/{pod}"), "--for=condition=Ready", "--timeout=60s"])?;
        let k = kubectl(minor, &ann.kubeconfig)?;
        let exec = kubectl_line(&k, &format!("exec -it {pod} -- sh -c 'test -t 0 && echo E$((2+3)); stty size'"));
        let term = Terminal::start(&exec)?;
        term.wait_for("E5", Duration::from_secs(30))?;
        term.wait_for("40 100", Duration::from_secs(5))?;
        ensure!(term.exit_code(Duration::from_secs(30))? == Some(0), "1.{minor} exec -it");

        let mut term = Terminal::start(&kubectl_line(&k, &format!("attach -it {pod}")))?;
        term.type_until("echo A$((40+2))", "A42")?;
        term.type_until(SIZE, "S40x100")?;
        term.send("exit 3\r")?;
        let code = term.exit_code(Duration::from_secs(60))?;
        ensure!(code.is_some(), "1.{minor} attach -it ended by a signal");
        ann.ok(&[
            "wait",
            &format!("pod/{pod}"),
            "--for=jsonpath={.status.containerStatuses[0].state.terminated.exitCode}=3",
            "--timeout=30s",
        ])?;
        // The terminal's output is the container's log.
        let log = ann.ok(&["logs", &pod])?;
        ensure!(log.contains("A42"), "1.{minor} log of a tty container: {log:?}");
    }
    ann.ok(&["delete", "pods", "--all", "--grace-period=1", "--timeout=60s"])?;
    drop(cluster);
    Ok(())
}

/// Waits until `path` (a process's output) contains `want`; its text.
fn wait_in_file(path: &Path, want: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path)?;
        if text.contains(want) {
            return Ok(text);
        }
        ensure!(Instant::now() < deadline, "no {want:?} in {text:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback port nobody listens on (for kubectl to listen on).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One connection through a forwarded port: the pod greets, echoes a line back, and on
/// `many` sends 20,000 numbered lines (about 108 KB, several frames).
fn talk_through(port: u16) -> Result<()> {
    use std::io::Write;
    let conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    ensure!(line == "hello\n", "greeting {line:?}");
    (&conn).write_all(b"ping\n")?;
    line.clear();
    reader.read_line(&mut line)?;
    ensure!(line == "echo ping\n", "echo {line:?}");
    (&conn).write_all(b"many\n")?;
    let mut rest = String::new();
    reader.read_to_string(&mut rest)?;
    let numbers: Vec<&str> = rest.lines().collect();
    ensure!(numbers.len() == 20000 && numbers[19999] == "20000", "{} lines, last {:?}", numbers.len(), numbers.last());
    Ok(())
}

#[test]
fn port_forward_through_the_api_server() -> Result<()> {
    let node = "pf-e2e-node";
    let (cluster, _admin, ann) = start_with_tenants(node)?;
    let dir = cluster.dir.path();
    let server = "printf '#!/bin/sh\\necho hello\\nread l\\necho echo $l\\nread l\\nseq 1 20000\\n' > /tmp/reply; \
                  chmod +x /tmp/reply; exec nc -ll -p 8080 -e /tmp/reply";
    ann.ok_with(&["create", "-f", "-"], Some(&pod("web", server, "Always")))?;
    ann.ok(&["wait", "pod/web", "--for=condition=Ready", "--timeout=60s"])?;
    // Ready is the container started, not nc listening (8080 is 1F90;
    // busybox nc listens on IPv6).
    let listening = "for i in $(seq 300); do cat /proc/net/tcp /proc/net/tcp6 | grep -q ':1F90 ' && exit 0; sleep 0.1; \
                     done; exit 1";
    ann.ok(&["exec", "web", "--", "sh", "-c", listening])?;

    // kubectl 1.27 and 1.30 speak SPDY; 1.33 tunnels SPDY in WebSocket messages (a GET),
    // and falls back to SPDY (a POST) when told not to tunnel.
    for (minor, websockets) in [(27, None), (30, None), (33, None), (33, Some("false"))] {
        let k = kubectl(minor, &ann.kubeconfig)?;
        let local = free_port()?;
        let mut cmd = k.command(&["port-forward", "-v=6", "pod/web", &format!("{local}:8080")]);
        if let Some(v) = websockets {
            cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", v);
        }
        // Output to files: kubectl dies of SIGPIPE when a pipe's reader goes away.
        let log = tempfile::NamedTempFile::new()?;
        let forward = Proc(cmd.stdout(log.reopen()?).stderr(log.reopen()?).spawn()?);
        wait_in_file(log.path(), "Forwarding from 127.0.0.1")?;
        // Two connections one after the other, then two at once, over the one upgrade.
        let said = || {
            std::thread::sleep(Duration::from_secs(1));
            std::fs::read_to_string(log.path()).unwrap_or_default()
        };
        talk_through(local).with_context(|| format!("1.{minor} first connection; kubectl said {}", said()))?;
        talk_through(local).with_context(|| format!("1.{minor} second connection"))?;
        let parallel = std::thread::spawn(move || talk_through(local));
        talk_through(local).with_context(|| format!("1.{minor} parallel connection"))?;
        parallel.join().map_err(|_| anyhow::anyhow!("thread"))??;
        drop(forward);
        let verbose = std::fs::read_to_string(log.path())?;
        let upgrade = verbose.lines().find(|l| l.contains("/portforward") && l.contains("101")).unwrap_or("");
        let method = if minor == 33 && websockets.is_none() { "GET" } else { "POST" };
        ensure!(upgrade.contains(method), "1.{minor} (websockets {websockets:?}) upgraded with: {verbose}");
    }

    // The Python client speaks Kubernetes' WebSocket port-forward (channels, ports in the query).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/python/port_forward.py");
    let out = Command::new("python3").arg(&script).arg(&ann.kubeconfig).output().context("python3")?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "the Python client's port-forward (pip install kubernetes): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A port nothing listens on: the connection ends and kubectl reports the pod's refusal.
    let k = kubectl(33, &ann.kubeconfig)?;
    let local = free_port()?;
    let log = tempfile::NamedTempFile::new()?;
    let forward = Proc(
        k.command(&["port-forward", "pod/web", &format!("{local}:9999")])
            .stdout(log.reopen()?)
            .stderr(log.reopen()?)
            .spawn()?,
    );
    wait_in_file(log.path(), "Forwarding from 127.0.0.1")?;
    let conn = std::net::TcpStream::connect(("127.0.0.1", local))?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut got = Vec::new();
    let _ = (&conn).read_to_end(&mut got);
    ensure!(got.is_empty(), "bytes from a closed port: {got:?}");
    wait_in_file(log.path(), "error forwarding port 9999")?;
    drop(forward);

    // Rights: a viewer may not forward; another tenant cannot tell the pod exists.
    ann.ok(&["create", "rolebinding", "vic-views", "--clusterrole=view", "--user=vic"])?;
    let vic = kubectl(27, &kubeconfig_for(dir, "acme", "vic")?)?;
    vic.eventually(&["get", "pod", "web"])?;
    let refused = vic.fails(&["port-forward", "pod/web", &format!("{}:8080", free_port()?)])?;
    ensure!(refused.contains("forbidden") && refused.contains("pods/portforward"), "vic: {refused}");
    let gus = kubectl(33, &kubeconfig_for(dir, "globex", "gus")?)?;
    gus.eventually(&["get", "namespace", "default"])?;
    let refused = gus.fails(&["port-forward", "pod/web", &format!("{}:8080", free_port()?)])?;
    ensure!(refused.contains("pods \"web\" not found") && !refused.contains("acme"), "gus: {refused}");
    for path in [
        "/api/v1/tenants/acme/namespaces/default/pods/web/portforward",
        "/tenants/acme/api/v1/namespaces/default/pods/web/portforward",
    ] {
        let refused = gus.fails(&["create", "--raw", path, "-f", "/dev/null"])?;
        ensure!(refused.contains("Forbidden") || refused.contains("forbidden"), "gus raw: {refused}");
    }
    ann.ok(&["delete", "pods", "--all", "--grace-period=1", "--timeout=60s"])?;
    drop(cluster);
    Ok(())
}
