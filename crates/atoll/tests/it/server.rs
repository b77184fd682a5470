//! `atoll server` driven by the real kubectl (several versions) over HTTPS with the admin
//! certificate it generates, in the short, tenant-path and prefix URL forms.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result, bail, ensure};

pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    pub(crate) dir: tempfile::TempDir,
    /// The flags it was started with (kept across restarts).
    extra: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Proc {
    /// Ctrl-C, as a user stops `atoll up` (its node agent removes its pods' containers,
    /// sandboxes and network namespaces on the way out), then waits up to `patience`.
    pub(crate) fn interrupt(&mut self, patience: std::time::Duration) -> Result<()> {
        let pid = self.0.id().to_string();
        ensure!(Command::new("kill").args(["-INT", &pid]).status()?.success(), "kill -INT failed");
        let deadline = std::time::Instant::now() + patience;
        while self.0.try_wait()?.is_none() {
            ensure!(std::time::Instant::now() < deadline, "the process did not stop on Ctrl-C within {patience:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `atoll server` on `listen` with its data in `dir` and `extra` flags; returns it
/// and its address.
fn spawn_server(dir: &Path, listen: &str, extra: &[String]) -> Result<(Child, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["server", "--listen", listen, "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let addr = line.trim().strip_prefix("listening on https://").context("no listening line")?.to_string();
    // Keep draining the server's output so it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    Ok((child, addr))
}

impl Server {
    pub(crate) fn start() -> Result<Server> {
        Server::start_with(&[])
    }

    /// A server started with `extra` command-line flags.
    pub(crate) fn start_with(extra: &[String]) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let (child, addr) = spawn_server(dir.path(), "127.0.0.1:0", extra)?;
        Ok(Server { child, addr, dir, extra: extra.to_vec() })
    }

    /// Stops the server and starts it again on the same address and data.
    pub(crate) fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, addr) = spawn_server(self.dir.path(), &self.addr, &self.extra)?;
        ensure!(addr == self.addr, "restarted on {addr}, not {}", self.addr);
        self.child = child;
        Ok(())
    }

    /// Stops the server (so that its store can be opened by someone else).
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// Runs `atoll controllers` against this server with the controllers' own identity.
    pub(crate) fn start_controllers(&self) -> Result<Proc> {
        let child = Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["controllers", "--kubeconfig"])
            .arg(self.component_kubeconfig("controllers")?)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Proc(child))
    }

    /// A kubeconfig for one of Atoll's components (`controllers`, `scheduler`,
    /// `node:<name>`), from `atoll admin kubeconfig --component`.
    pub(crate) fn component_kubeconfig(&self, component: &str) -> Result<PathBuf> {
        let config = self.dir.path().join(format!("{}.kubeconfig", component.replace(':', "-")));
        let status = Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["admin", "kubeconfig", "--component", component, "--data-dir"])
            .arg(self.dir.path())
            .arg("--output")
            .arg(&config)
            .status()?;
        ensure!(status.success(), "atoll admin kubeconfig --component {component} failed");
        Ok(config)
    }

    /// kubectl 1.`minor` as user `name` of `tenant` (a certificate from `atoll admin
    /// kubeconfig`).
    pub(crate) fn user(&self, tenant: &str, name: &str, minor: u32) -> Result<Kubectl> {
        let config = self.dir.path().join(format!("{name}@{tenant}.kubeconfig"));
        let status = Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["admin", "kubeconfig", "--tenant", tenant, "--user", name, "--data-dir"])
            .arg(self.dir.path())
            .arg("--output")
            .arg(&config)
            .status()?;
        ensure!(status.success(), "atoll admin kubeconfig failed");
        Ok(Kubectl { bin: kubectl_binary(minor)?, kubeconfig: config, cache: tempfile::tempdir()? })
    }
}

/// The versioned kubectl binaries installed beside the `kubectl` dispatcher.
pub(crate) fn kubectl_binary(minor: u32) -> Result<PathBuf> {
    let dispatcher = which("kubectl").context("kubectl is not on the PATH; these tests need it")?;
    let real = std::fs::canonicalize(dispatcher)?;
    let bin = real.parent().context("kubectl directory")?.join(format!("kubectl.1.{minor}"));
    ensure!(bin.is_file(), "{} is missing; the tests need kubectl 1.{minor}", bin.display());
    Ok(bin)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

pub(crate) struct Kubectl {
    pub(crate) bin: PathBuf,
    pub(crate) kubeconfig: PathBuf,
    pub(crate) cache: tempfile::TempDir,
}

impl Kubectl {
    pub(crate) fn new(minor: u32, server: &Server) -> Result<Kubectl> {
        Ok(Kubectl { bin: kubectl_binary(minor)?, kubeconfig: server.kubeconfig(), cache: tempfile::tempdir()? })
    }

    pub(crate) fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--cache-dir").arg(self.cache.path()).args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// The kubectl command with this identity and cache, to run as the caller likes.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--cache-dir").arg(self.cache.path()).args(args);
        cmd
    }

    /// Runs and expects success; returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> Result<String> {
        self.ok_with(args, None)
    }

    pub(crate) fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        if !out.status.success() {
            bail!(
                "{} {args:?} failed:\n{}{}",
                self.bin.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Retries `args` until it succeeds (controllers act asynchronously), 20 s at most;
    /// returns stdout.
    pub(crate) fn eventually(&self, args: &[&str]) -> Result<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let out = self.run(args, None)?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if std::time::Instant::now() > deadline {
                bail!("kubectl {args:?} kept failing: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Runs and expects failure; returns stderr.
    pub(crate) fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args, None)?;
        ensure!(!out.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn configmap(name: &str, ns: &str) -> String {
    format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{ns}\",\"labels\":{{\"app\":\"web\"}}}},\"data\":{{\"k\":\"v\"}}}}"
    )
}

fn core_kinds_work_with(minor: u32) -> Result<()> {
    let server = Server::start()?;
    let k = Kubectl::new(minor, &server)?;
    let version = k.ok(&["version", "-o", "json"])?;
    ensure!(version.contains("\"minor\": \"33\""), "server version: {version}");
    ensure!(k.ok(&["get", "--raw", "/healthz"])? == "ok");
    let ns = format!("e2e-{minor}");
    // The cluster's own namespaces exist; objects go only into namespaces that exist.
    let system_namespaces = k.ok(&["get", "namespaces", "-o", "name"])?;
    ensure!(system_namespaces.contains("namespace/default") && system_namespaces.contains("namespace/kube-system"));
    let missing = k.fails(&["create", "configmap", "x", "-n", "no-such-namespace"])?;
    ensure!(missing.contains("namespaces \"no-such-namespace\" not found"), "{missing}");
    // Typed commands: kubectl 1.32+ send them as protobuf, older ones as JSON.
    k.ok(&["create", "namespace", &ns])?;
    k.ok(&["create", "secret", "generic", "s1", "-n", &ns, "--from-literal=pw=hunter2"])?;
    k.ok(&["run", "web", "-n", &ns, "--image=busybox", "--env=A=1", "--port=80", "--", "sleep", "3600"])?;
    k.ok(&["create", "deployment", "d1", "-n", &ns, "--image=busybox", "--replicas=3"])?;
    let pod = k.ok(&["get", "pod", "web", "-n", &ns, "-o", "jsonpath={.spec.containers[0].args}{.spec.containers[0].env[0].value}{.spec.containers[0].ports[0].containerPort}"])?;
    ensure!(pod == "[\"sleep\",\"3600\"]180", "kubectl run's pod: {pod}");
    // A new pod is Pending, in its QoS class (no node agent runs here to start it).
    let status = k.ok(&["get", "pod", "web", "-n", &ns, "-o", "jsonpath={.status.phase}/{.status.qosClass}"])?;
    ensure!(status == "Pending/BestEffort", "a new pod's status: {status}");
    // The server's status is nobody's: the creator's ownership record leaves it out.
    let record = k.ok(&["get", "pod", "web", "-n", &ns, "-o", "jsonpath={.metadata.managedFields}"])?;
    ensure!(record.contains("f:containers") && !record.contains("f:status"), "the creator's record: {record}");
    let deploy = k.ok(&[
        "get",
        "deployment",
        "d1",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.replicas}{.spec.selector.matchLabels.app}",
    ])?;
    ensure!(deploy == "3d1", "kubectl create deployment: {deploy}");
    k.ok(&["scale", "deployment", "d1", "-n", &ns, "--replicas=5"])?;
    let scaled = k.ok(&["get", "deployment", "d1", "-n", &ns, "-o", "jsonpath={.spec.replicas}"])?;
    ensure!(scaled == "5", "kubectl scale through the scale subresource: {scaled}");
    let secret = k.ok(&["get", "secret", "s1", "-n", &ns, "-o", "jsonpath={.data.pw}"])?;
    ensure!(secret == "aHVudGVyMg==", "secret data: {secret}");
    // stringData is folded into base64 data on every write and never stored or returned.
    let string_secret = |v: &str| {
        format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{{\"name\":\"s2\",\"namespace\":\"{ns}\"}},\"stringData\":{{\"k\":\"{v}\"}}}}"
        )
    };
    for (value, encoded) in [("v", "dg=="), ("w", "dw==")] {
        k.ok_with(&["apply", "-f", "-"], Some(&string_secret(value)))?;
        let got = k.ok(&["get", "secret", "s2", "-n", &ns, "-o", "jsonpath={.data.k}|{.stringData}"])?;
        ensure!(got == format!("{encoded}|"), "applied stringData {value:?}: {got}");
    }
    let all = k.ok(&["get", "all", "-n", &ns, "-o", "name"])?;
    ensure!(all.contains("pod/web") && all.contains("deployment.apps/d1"), "get all: {all}");
    ensure!(k.ok(&["get", "namespaces", "-o", "name"])?.contains(&format!("namespace/{ns}")));
    ensure!(k.ok(&["get", "ns", &ns, "-o", "jsonpath={.status.phase}"])? == "Active");
    ensure!(k.ok(&["api-resources", "-o", "name"])?.contains("configmaps"), "discovery");
    let explained = k.ok(&["explain", "configmaps"])?;
    ensure!(explained.contains("KIND:") && explained.contains("ConfigMap"), "kubectl explain: {explained}");
    // Nested fields, from the kinds' full OpenAPI schemas (v3, or v2 for 1.27/1.28).
    let nested = k.ok(&["explain", "pods.spec.containers"])?;
    ensure!(nested.contains("imagePullPolicy") && nested.contains("volumeMounts"), "explain: {nested}");
    // Strict validation sees misspelt fields at any depth.
    let deep_typo = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"typo\",\"namespace\":\"{ns}\"}},\"spec\":{{\"containers\":[{{\"name\":\"c\",\"image\":\"i\",\"imagePullPolicyy\":\"Always\"}}]}}}}"
    );
    let deep = k.run(&["create", "-f", "-"], Some(&deep_typo))?;
    let deep_err = String::from_utf8_lossy(&deep.stderr);
    ensure!(
        !deep.status.success() && deep_err.contains("unknown field \"spec.containers[0].imagePullPolicyy\""),
        "strict validation of nested fields: {deep_err}"
    );

    k.ok_with(&["create", "-f", "-"], Some(&configmap("c1", &ns)))?;
    // Validation is the server's (kubectl learns that from OpenAPI and asks for Strict).
    let typo = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"typo\",\"namespace\":\"{ns}\"}},\"dta\":{{}}}}"
    );
    let strict = k.run(&["create", "-f", "-"], Some(&typo))?;
    let strict_err = String::from_utf8_lossy(&strict.stderr);
    ensure!(
        !strict.status.success() && strict_err.contains("unknown field \"dta\""),
        "strict validation: {strict_err}"
    );
    k.ok_with(&["create", "--validate=false", "-f", "-"], Some(&typo))?;
    // Without Strict, unknown fields are dropped at any depth, as Kubernetes drops them.
    let kept = k.ok(&["get", "configmap", "typo", "-n", &ns, "-o", "json"])?;
    ensure!(!kept.contains("dta"), "an unknown field was stored: {kept}");
    k.ok_with(&["create", "--validate=false", "-f", "-"], Some(&deep_typo))?;
    let kept = k.ok(&["get", "pod", "typo", "-n", &ns, "-o", "json"])?;
    ensure!(!kept.contains("imagePullPolicyy") && kept.contains("\"image\": \"i\""), "unknown field stored: {kept}");
    let dup = k.run(&["create", "-f", "-"], Some(&configmap("c1", &ns)))?;
    ensure!(String::from_utf8_lossy(&dup.stderr).contains("AlreadyExists"), "duplicate create says AlreadyExists");
    k.ok(&["label", "configmap", "c1", "-n", &ns, "tier=front"])?;
    k.ok(&["annotate", "configmap", "c1", "-n", &ns, "note=hello"])?;
    k.ok(&["patch", "configmap", "c1", "-n", &ns, "--type=merge", "-p", "{\"data\":{\"m\":\"1\"}}"])?;
    k.ok(&[
        "patch",
        "configmap",
        "c1",
        "-n",
        &ns,
        "--type=json",
        "-p",
        "[{\"op\":\"add\",\"path\":\"/data/j\",\"value\":\"2\"}]",
    ])?;
    let data = k.ok(&[
        "get",
        "configmap",
        "c1",
        "-n",
        &ns,
        "-o",
        "jsonpath={.data.k}{.data.m}{.data.j}{.metadata.labels.tier}{.metadata.annotations.note}",
    ])?;
    ensure!(data == "v12fronthello", "after label/annotate/patch: {data}");
    ensure!(k.ok(&["get", "configmap", "c1", "-n", &ns, "-o", "jsonpath={.metadata.tenant}"])? == "system");
    k.ok_with(&["create", "-f", "-"], Some(&configmap("c2", &ns)))?;
    k.ok(&["label", "configmap", "c2", "-n", &ns, "tier=back"])?;
    let names = k.ok(&["get", "configmaps", "-n", &ns, "-l", "tier=front", "-o", "name"])?;
    ensure!(names.trim() == "configmap/c1", "label selector: {names}");
    let names = k.ok(&["get", "configmaps", "-n", &ns, "--field-selector", "metadata.name=c2", "-o", "name"])?;
    ensure!(names.trim() == "configmap/c2", "field selector: {names}");
    let paged = k.ok(&["get", "configmaps", "-n", &ns, "--chunk-size=1", "-o", "name"])?;
    ensure!(paged.lines().count() == 3, "paging with --chunk-size: {paged}");
    // Server-side printing: the columns kubectl shows come from the server's Table.
    let table = k.ok(&["get", "configmaps", "-n", &ns])?;
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    ensure!(header == ["NAME", "DATA", "AGE"], "configmap table: {table}");
    let namespaces = k.ok(&["get", "namespace", &ns])?;
    ensure!(namespaces.contains("STATUS") && namespaces.contains("Active"), "namespace table: {namespaces}");
    let yaml = k.ok(&["get", "configmap", "c1", "-n", &ns, "-o", "yaml"])?;
    ensure!(yaml.contains("resourceVersion:") && yaml.contains("uid:"));
    let missing = k.fails(&["get", "configmap", "nope", "-n", &ns])?;
    ensure!(missing.contains("NotFound") && missing.contains("\"nope\" not found"), "{missing}");

    // Client-side apply (a strategic merge patch from the last-applied annotation), edit
    // through $EDITOR, diff, and kubectl patch's default (strategic) type.
    let manifest = |extra: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: {ns}\ndata:\n  a: \"1\"\n{extra}"
        )
    };
    let first = manifest("  b: \"2\"\n");
    ensure!(k.ok_with(&["apply", "-f", "-"], Some(&first))?.contains("created"));
    ensure!(k.ok_with(&["apply", "-f", "-"], Some(&first))?.contains("unchanged"));
    let second = manifest("  c: \"3\"\n");
    ensure!(k.ok_with(&["apply", "-f", "-"], Some(&second))?.contains("configured"));
    let data = k.ok(&["get", "configmap", "applied", "-n", &ns, "-o", "jsonpath={.data}"])?;
    ensure!(data == "{\"a\":\"1\",\"c\":\"3\"}", "apply removed b and added c: {data}");
    let diff = k.run(&["diff", "-f", "-"], Some(&second))?;
    ensure!(diff.status.code() == Some(0), "no difference after apply: {}", String::from_utf8_lossy(&diff.stdout));
    k.ok(&["patch", "configmap", "applied", "-n", &ns, "-p", "{\"data\":{\"s\":\"smp\"}}"])?;
    let editor = server.dir.path().join(format!("editor-{minor}.sh"));
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/smp/edited/' \"$1\"\n")?;
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let edit = k.command(&["edit", "configmap", "applied", "-n", &ns]).env("EDITOR", &editor).output()?;
    ensure!(edit.status.success(), "edit: {}", String::from_utf8_lossy(&edit.stderr));
    ensure!(k.ok(&["get", "configmap", "applied", "-n", &ns, "-o", "jsonpath={.data.s}"])? == "edited");

    // A watch sees a later deletion.
    let mut watch = k
        .command(&["get", "configmaps", "-n", &ns, "-w", "-o", "name", "--request-timeout=20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().context("watch printed nothing")??;
    ensure!(first.starts_with("configmap/"), "first watch line {first}");
    k.ok(&["delete", "configmap", "c2", "-n", &ns])?;
    let mut saw = Vec::new();
    for line in lines.by_ref().take(3) {
        let line = line?;
        saw.push(line.clone());
        if line == "configmap/c2" && saw.len() >= 2 {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    ensure!(saw.iter().filter(|l| *l == "configmap/c2").count() >= 1, "watch lines {saw:?}");
    ensure!(k.fails(&["get", "configmap", "c2", "-n", &ns])?.contains("NotFound"));

    // The same objects through the tenant path and the tenant prefix.
    let via_path = k.ok(&["get", "--raw", &format!("/api/v1/tenants/system/namespaces/{ns}/configmaps/c1")])?;
    ensure!(via_path.contains("\"name\":\"c1\""), "tenant path: {via_path}");
    let prefix = format!("https://{}/tenants/system", server.addr);
    let via_prefix = k.ok(&["--server", &prefix, "get", "configmap", "c1", "-n", &ns, "-o", "name"])?;
    ensure!(via_prefix.trim() == "configmap/c1", "tenant prefix: {via_prefix}");
    let all = k.ok(&["get", "--raw", "/api/v1/tenants/all/configmaps"])?;
    ensure!(all.contains("\"tenant\":\"system\""), "all-tenant list shows the tenant");
    // `--raw` paths are absolute, so the prefix goes into the path itself.
    let conflicting = k.fails(&["get", "--raw", "/tenants/system/api/v1/tenants/other/configmaps"])?;
    ensure!(conflicting.contains("BadRequest"), "a URL naming two tenants is refused: {conflicting}");
    Ok(())
}

#[test]
fn kubectl_1_27_manages_core_objects() -> Result<()> {
    core_kinds_work_with(27)
}

#[test]
fn kubectl_1_30_manages_core_objects() -> Result<()> {
    core_kinds_work_with(30)
}

#[test]
fn kubectl_1_33_manages_core_objects() -> Result<()> {
    core_kinds_work_with(33)
}

#[test]
fn requests_without_a_client_certificate_are_refused() -> Result<()> {
    let server = Server::start()?;
    // A kubeconfig that trusts the CA but presents no identity.
    let admin = std::fs::read_to_string(server.kubeconfig())?;
    let anonymous: String = admin
        .lines()
        .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = server.dir.path().join("anonymous.kubeconfig");
    std::fs::write(&path, anonymous.replace("  user:\n", "  user: {}\n"))?;
    let k = Kubectl { bin: kubectl_binary(33)?, kubeconfig: path, cache: tempfile::tempdir()? };
    // A bearer token is no identity the server knows (yet): it counts as none.
    ensure!(k.ok(&["--token=not-a-token", "get", "--raw", "/healthz"])? == "ok", "health needs no identity");
    let err = k.fails(&["--token=not-a-token", "get", "namespaces"])?;
    ensure!(err.contains("Unauthorized") || err.contains("must be logged in"), "{err}");
    // Plain HTTPS without any credentials.
    let ca = server.dir.path().join("pki/ca.crt");
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca)
        .arg(format!("https://{}/api/v1/namespaces", server.addr))
        .output()
        .context("curl is needed for this test")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.ends_with("401") && text.contains("\"kind\":\"Status\""), "anonymous request: {text}");
    ensure!(server.dir.path().join("store/wal").is_dir(), "the embedded store lives in the data directory");
    let mode = std::fs::metadata(server.dir.path().join("pki/ca.key"))?.permissions();
    ensure!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077 == 0, "the CA key is private");
    Ok(())
}

pub(crate) fn tenant_json(name: &str) -> String {
    format!("{{\"apiVersion\":\"atoll.io/v1\",\"kind\":\"Tenant\",\"metadata\":{{\"name\":\"{name}\"}}}}")
}

/// A Tenant whose `spec.admins` are bound to its cluster-admin role.
pub(crate) fn tenant_admins_json(name: &str, admins: &[&str]) -> String {
    serde_json::json!({"apiVersion": "atoll.io/v1", "kind": "Tenant", "metadata": {"name": name},
                       "spec": {"admins": admins}})
    .to_string()
}

pub(crate) fn namespace_json(name: &str) -> String {
    format!("{{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{{\"name\":\"{name}\"}}}}")
}

#[test]
fn tenants_are_created_isolated_and_deleted_with_what_they_hold() -> Result<()> {
    let server = Server::start()?;
    let admin = Kubectl::new(33, &server)?;
    // Reserved and unknown tenants.
    let reserved = admin.run(&["create", "-f", "-"], Some(&tenant_json("all")))?;
    ensure!(String::from_utf8_lossy(&reserved.stderr).contains("reserved"), "tenant \"all\" is reserved");
    let unknown = admin.fails(&["get", "--raw", "/tenants/acme/api/v1/namespaces"])?;
    ensure!(unknown.contains("NotFound"), "a tenant that does not exist: {unknown}");
    // Alice administers acme (a binding to acme's cluster-admin role).
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["alice"])))?;
    ensure!(admin.ok(&["get", "tenants", "-o", "name"])?.trim() == "tenant.atoll.io/acme");
    // A Tenant is an object like any other: labels, annotations, patches, describe, YAML.
    admin.ok(&["label", "tenant", "acme", "tier=gold"])?;
    admin.ok(&["annotate", "tenant", "acme", "owner=finance"])?;
    admin.ok(&["patch", "tenant", "acme", "--type=merge", "-p", "{\"metadata\":{\"labels\":{\"region\":\"eu\"}}}"])?;
    let described = admin.ok(&["describe", "tenant", "acme"])?;
    ensure!(described.contains("tier=gold") && described.contains("owner: finance"), "{described}");
    let yaml = admin.ok(&["get", "tenant", "acme", "-o", "yaml"])?;
    ensure!(yaml.contains("region: eu") && yaml.contains("kind: Tenant"), "{yaml}");
    ensure!(admin.ok(&["get", "tenants", "-l", "tier=gold", "-o", "name"])?.trim() == "tenant.atoll.io/acme");

    // A user of tenant acme, with a certificate from `atoll admin kubeconfig`.
    let alice_config = server.dir.path().join("alice.kubeconfig");
    let status = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["admin", "kubeconfig", "--tenant", "acme", "--user", "alice", "--data-dir"])
        .arg(server.dir.path())
        .arg("--output")
        .arg(&alice_config)
        .status()?;
    ensure!(status.success(), "atoll admin kubeconfig failed");
    let config = std::fs::read_to_string(&alice_config)?;
    ensure!(config.contains("current-context: alice@acme"), "the context names the tenant");
    let alice = Kubectl { bin: kubectl_binary(33)?, kubeconfig: alice_config, cache: tempfile::tempdir()? };

    // Alice's short paths land in acme; the admin's in system.
    alice.ok_with(&["create", "-f", "-"], Some(&namespace_json("team")))?;
    alice.ok_with(&["create", "-f", "-"], Some(&configmap("shared-name", "team")))?;
    admin.ok_with(&["create", "-f", "-"], Some(&namespace_json("team")))?;
    admin.ok_with(&["create", "-f", "-"], Some(&configmap("shared-name", "team")))?;
    admin.ok_with(&["create", "-f", "-"], Some(&configmap("admin-only", "team")))?;
    let mine = alice.ok(&["get", "configmaps", "-n", "team", "-o", "name"])?;
    ensure!(mine.trim() == "configmap/shared-name", "alice sees only acme's objects: {mine}");
    ensure!(alice.ok(&["get", "cm", "shared-name", "-n", "team", "-o", "jsonpath={.metadata.tenant}"])? == "acme");
    let hidden = alice.fails(&["get", "configmap", "admin-only", "-n", "team"])?;
    ensure!(hidden.contains("NotFound"), "another tenant's object does not exist for alice: {hidden}");
    // Alice cannot reach another tenant by any URL form, and learns nothing about it.
    for path in [
        "/api/v1/tenants/system/namespaces/team/configmaps",
        "/tenants/system/api/v1/namespaces/team/configmaps",
        "/api/v1/tenants/all/configmaps",
        "/api/v1/tenants/no-such-tenant/configmaps",
        "/apis/atoll.io/v1/tenants",
    ] {
        let err = alice.fails(&["get", "--raw", path])?;
        ensure!(err.contains("Forbidden") || err.contains("forbidden"), "{path}: {err}");
        ensure!(!err.contains("admin-only") && !err.contains("NotFound"), "{path} leaks: {err}");
    }
    // The administrator reaches acme through the tenant path and prefix.
    let via_path = admin.ok(&["get", "--raw", "/api/v1/tenants/acme/namespaces/team/configmaps"])?;
    ensure!(via_path.contains("\"tenant\":\"acme\"") && !via_path.contains("admin-only"));

    // Deleting a tenant deletes what it holds (the controllers empty it first), and only
    // that: the system tenant's namespace of the same name keeps its objects.
    let _controllers = server.start_controllers()?;
    admin.ok(&["delete", "tenant", "acme", "--timeout=30s"])?;
    let gone = alice.fails(&["get", "configmaps", "-n", "team"])?;
    ensure!(!gone.is_empty(), "a deleted tenant's users are refused");
    ensure!(
        admin.ok(&["get", "configmap", "admin-only", "-n", "team", "-o", "name"])?.trim() == "configmap/admin-only"
    );
    Ok(())
}

#[test]
fn the_official_python_client_works() -> Result<()> {
    let server = Server::start()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/python/client_crud.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(server.kubeconfig())
        .output()
        .context("python3 is needed for this test")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim() == "ok",
        "the Python client failed (pip install kubernetes):\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Requests `path` with the admin certificate and further curl arguments (method, headers,
/// body); returns (status line and headers, lower-cased; body).
fn curl_admin(server: &Server, path: &str, extra: &[&str]) -> Result<(String, String)> {
    let pki = server.dir.path().join("pki");
    let out = Command::new("curl")
        .args(["-s", "-D", "-"])
        .args(extra)
        .arg("--cacert")
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(format!("https://{}{path}", server.addr))
        .output()
        .context("curl is needed for this test")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Skip interim responses (100 Continue) to the final one.
    let mut text = text.as_str();
    while text.starts_with("HTTP/1.1 100") {
        text = text.split_once("\r\n\r\n").map_or("", |(_, rest)| rest);
    }
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP response")?;
    Ok((head.to_ascii_lowercase(), body.to_string()))
}

#[test]
fn discovery_answers_in_the_version_asked_for() -> Result<()> {
    let server = Server::start()?;
    for version in ["v2", "v2beta1"] {
        let accept =
            format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList,application/json");
        let (head, body) = curl_admin(&server, "/apis", &["-H", &format!("Accept: {accept}")])?;
        ensure!(
            head.contains(&format!(
                "content-type: application/json;g=apidiscovery.k8s.io;v={version};as=apigroupdiscoverylist"
            )),
            "{head}"
        );
        let doc: serde_json::Value = serde_json::from_str(&body)?;
        ensure!(doc["apiVersion"] == format!("apidiscovery.k8s.io/{version}"));
        let apps = doc["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["metadata"]["name"] == "apps")
            .context("apps group")?;
        let deployments = apps["versions"][0]["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["resource"] == "deployments")
            .context("deployments")?;
        let subs: Vec<_> =
            deployments["subresources"].as_array().into_iter().flatten().map(|s| s["subresource"].clone()).collect();
        ensure!(subs.contains(&serde_json::json!("scale")) && subs.contains(&serde_json::json!("status")), "{subs:?}");
    }
    let (head, body) = curl_admin(&server, "/api", &["-H", "Accept: application/json"])?;
    ensure!(
        head.contains("content-type: application/json\r") || head.ends_with("content-type: application/json"),
        "{head}"
    );
    ensure!(body.contains("\"kind\":\"APIVersions\""), "legacy discovery: {body}");
    Ok(())
}

/// The value of the sample `name{labels}` in a Prometheus text answer, if present.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_every_tenants_requests_for_the_system_tenant_only() -> Result<()> {
    let server = Server::start()?;
    let root = Kubectl::new(33, &server)?;
    root.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["ann"])))?;
    let ann = server.user("acme", "ann", 33)?;
    root.ok_with(&["create", "-f", "-"], Some(&namespace_json("mine")))?;
    ann.ok_with(&["create", "-f", "-"], Some(&namespace_json("theirs")))?;
    root.ok_with(&["create", "-f", "-"], Some(&configmap("a", "mine")))?;
    ann.ok_with(&["create", "-f", "-"], Some(&configmap("b", "theirs")))?;
    ann.ok_with(&["create", "-f", "-"], Some(&configmap("c", "theirs")))?;
    root.fails(&["get", "configmap", "nothing", "-n", "mine"])?;
    // Paths that name no served kind are counted, under no name of the caller's choosing.
    ann.fails(&["get", "--raw", "/apis/made-up.example/v1/namespaces/theirs/gadgets"])?;

    let text = root.ok(&["get", "--raw", "/metrics"])?;
    let post = r#"group="",resource="configmaps",scope="namespace",subresource="",verb="POST",version="v1""#;
    let get = r#"group="",resource="configmaps",scope="resource",subresource="",verb="GET",version="v1""#;
    ensure!(
        sample(&text, &format!("apiserver_request_total{{code=\"201\",{post}}}")) == Some(3),
        "three creates in two tenants, counted together:\n{text}"
    );
    ensure!(sample(&text, &format!("apiserver_request_total{{code=\"404\",{get}}}")) == Some(1), "{text}");
    ensure!(sample(&text, &format!("apiserver_request_duration_seconds_count{{{post}}}")) == Some(3), "{text}");
    ensure!(
        sample(&text, &format!("apiserver_request_duration_seconds_bucket{{{post},le=\"+Inf\"}}")) == Some(3),
        "{text}"
    );
    ensure!(!text.contains("acme") && !text.contains("theirs"), "no label names a tenant or namespace:\n{text}");
    ensure!(!text.contains("made-up") && !text.contains("gadgets"), "nor a kind the caller made up:\n{text}");
    let other = r#"group="",resource="other",scope="namespace",subresource="",verb="LIST",version="""#;
    ensure!(text.lines().any(|l| l.starts_with("apiserver_request_total{code=") && l.contains(other)), "{text}");

    // A tenant's administrator holds every URL in their tenant, but the numbers are every
    // tenant's: refused, by either path.
    for path in ["/metrics", "/tenants/acme/metrics", "/tenants/system/metrics"] {
        let refused = ann.fails(&["get", "--raw", path])?;
        ensure!(refused.contains("Forbidden") || refused.contains("forbidden"), "{path}: {refused}");
    }
    // The system tenant's components hold no more than they need: not the metrics.
    let scheduler = Kubectl {
        bin: kubectl_binary(33)?,
        kubeconfig: server.component_kubeconfig("scheduler")?,
        cache: tempfile::tempdir()?,
    };
    let refused = scheduler.fails(&["get", "--raw", "/metrics"])?;
    ensure!(refused.contains("Forbidden") || refused.contains("forbidden"), "{refused}");
    Ok(())
}

#[test]
fn pods_bind_once_and_keep_their_spec() -> Result<()> {
    let server = Server::start()?;
    let k = Kubectl::new(33, &server)?;
    k.ok(&["run", "p", "--image=busybox", "--", "sleep", "60"])?;
    let bind_as = |pod: &str, meta: &str, node: &str| -> Result<(String, String)> {
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"Binding","metadata":{{"name":"{pod}"{meta}}},"target":{{"kind":"Node","name":"{node}"}}}}"#
        );
        let post = ["-X", "POST", "-H", "Content-Type: application/json", "-d", &body];
        curl_admin(&server, &format!("/api/v1/namespaces/default/pods/{pod}/binding"), &post)
    };
    let bind = |node: &str| bind_as("p", "", node);
    let code = |head: &str| head.lines().next().unwrap_or("").split(' ').nth(1).unwrap_or("").to_string();
    let record = || k.ok(&["get", "pod", "p", "-o", "jsonpath={.metadata.managedFields}"]);
    let before = record()?;
    ensure!(before.contains("f:containers"), "the create is recorded: {before}");
    // A dry run is checked and answered, and binds nothing.
    let body =
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"node-0"}}"#;
    let post = ["-X", "POST", "-H", "Content-Type: application/json", "-d", body];
    let (head, answer) = curl_admin(&server, "/api/v1/namespaces/default/pods/p/binding?dryRun=All", &post)?;
    ensure!(head.lines().next().is_some_and(|l| l.contains(" 201")), "dry-run binding: {head}{answer}");
    ensure!(k.ok(&["get", "pod", "p", "-o", "jsonpath={.spec.nodeName}"])?.is_empty(), "a dry run binds nothing");
    // The binding's uid and resourceVersion, when given, are preconditions on the pod.
    let (uid, rv) = {
        let got = k.ok(&["get", "pod", "p", "-o", "jsonpath={.metadata.uid} {.metadata.resourceVersion}"])?;
        let (uid, rv) = got.split_once(' ').context("uid and resourceVersion")?;
        (uid.to_string(), rv.to_string())
    };
    let (head, body) = bind_as("p", r#","uid":"not-the-pods""#, "node-1")?;
    ensure!(code(&head) == "409" && body.contains("Precondition failed: UID in precondition"), "{head}{body}");
    k.ok(&["label", "pod", "p", "moved=yes"])?;
    let (head, body) = bind_as("p", &format!(r#","resourceVersion":"{rv}""#), "node-1")?;
    ensure!(code(&head) == "409" && body.contains("ResourceVersion in the precondition"), "stale: {head}{body}");
    ensure!(
        k.ok(&["get", "pod", "p", "-o", "jsonpath={.spec.nodeName}"])?.is_empty(),
        "a refused binding binds nothing"
    );
    let rv = k.ok(&["get", "pod", "p", "-o", "jsonpath={.metadata.resourceVersion}"])?;
    let labelled = record()?;
    ensure!(labelled.contains("f:moved"), "the label is recorded: {labelled}");
    let meta = format!(r#","uid":"{uid}","resourceVersion":"{rv}","annotations":{{"bound-by":"test"}}"#);
    let (head, body) = bind_as("p", &meta, "node-1")?;
    ensure!(code(&head) == "201", "first binding: {head}{body}");
    ensure!(k.ok(&["get", "pod", "p", "-o", "jsonpath={.spec.nodeName}"])? == "node-1");
    let annotation = k.ok(&["get", "pod", "p", "-o", "jsonpath={.metadata.annotations.bound-by}"])?;
    ensure!(annotation == "test", "the binding's annotations go to the pod: {annotation:?}");
    let scheduled =
        k.ok(&["get", "pod", "p", "-o", r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].status}"#])?;
    ensure!(scheduled == "True", "a binding marks the pod scheduled: {scheduled}");
    // The binding is the server's change, recorded for nobody: the record stays as it was.
    ensure!(record()? == labelled, "managed fields after binding: {} against {labelled}", record()?);
    // A pod held by scheduling gates is not bound.
    let gated = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"g"},"spec":{"schedulingGates":[{"name":"example.com/wait"}],"containers":[{"name":"c","image":"busybox"}]}}"#;
    k.ok_with(&["create", "-f", "-"], Some(gated))?;
    let (head, body) = bind_as("g", "", "node-1")?;
    ensure!(code(&head) == "409" && body.contains("non-empty .spec.schedulingGates"), "gated: {head}{body}");
    ensure!(k.ok(&["get", "pod", "g", "-o", "jsonpath={.spec.nodeName}"])?.is_empty(), "a gated pod was bound");
    let (head, body) = bind("node-2")?;
    ensure!(
        head.lines().next().is_some_and(|l| l.contains(" 409")) && body.contains("already assigned"),
        "second binding: {head}{body}"
    );
    // The spec is fixed after creation, apart from images.
    let err = k.fails(&["patch", "pod", "p", "--type=merge", "-p", r#"{"spec":{"restartPolicy":"Never"}}"#])?;
    ensure!(err.contains("pod updates may not change fields"), "{err}");
    k.ok(&["set", "image", "pod/p", "p=busybox:2"])?;
    ensure!(k.ok(&["get", "pod", "p", "-o", "jsonpath={.spec.containers[0].image}"])? == "busybox:2");
    // A bound pod is deleted gracefully: it stays, terminating, until its node's agent
    // (not running here) finishes; a grace period of 0 ends it.
    k.ok(&["delete", "pod", "p", "--wait=false"])?;
    ensure!(k.ok(&["get", "pod", "p", "-o", "jsonpath={.metadata.deletionGracePeriodSeconds}"])? == "30");
    k.ok(&["delete", "pod", "p", "--grace-period=0", "--force"])?;
    ensure!(k.fails(&["get", "pod", "p"])?.contains("NotFound"));
    Ok(())
}

fn cm_manifest(name: &str, ns: &str, data: &[(&str, &str)]) -> String {
    let data: String = data.iter().map(|(k, v)| format!("  {k}: \"{v}\"\n")).collect();
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n{data}")
}

/// `kubectl apply --server-side` through `k` (whose server URL `extra` may change): create,
/// dry run, a conflict reported and forced, removal of a dropped field, and the move from
/// client-side apply.
fn server_side_apply_round(k: &Kubectl, extra: &[&str], ns: &str) -> Result<()> {
    let run = |args: &[&str], stdin: Option<&str>| k.run(&[extra, args].concat(), stdin);
    let ok = |args: &[&str], stdin: Option<&str>| -> Result<String> {
        let out = run(args, stdin)?;
        ensure!(out.status.success(), "{args:?}: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        Ok(stdout(&out))
    };
    let get =
        |name: &str, path: &str| ok(&["get", "configmap", name, "-n", ns, "-o", &format!("jsonpath={path}")], None);
    let ssa = ["apply", "--server-side", "-f", "-"];

    let created = ok(&ssa, Some(&cm_manifest("ssa", ns, &[("a", "1"), ("b", "2")])))?;
    ensure!(created.contains("configmap/ssa serverside-applied"), "{created}");
    ensure!(get("ssa", "{.data.a}{.data.b}")? == "12");
    let owner = get("ssa", "{.metadata.managedFields[0].manager}/{.metadata.managedFields[0].operation}")?;
    ensure!(owner == "kubectl/Apply", "managed fields after apply: {owner}");

    let dry = ok(&[&ssa[..], &["--dry-run=server"]].concat(), Some(&cm_manifest("ssa", ns, &[("a", "dry")])))?;
    ensure!(dry.contains("(server dry run)"), "{dry}");
    ensure!(get("ssa", "{.data.a}{.data.b}")? == "12", "a server-side dry run changes nothing");

    // Someone else changes a: the next apply of a conflicts with them, until forced.
    ok(&["patch", "configmap", "ssa", "-n", ns, "--type=merge", "-p", r#"{"data":{"a":"other"}}"#], None)?;
    let patcher = get("ssa", "{.metadata.managedFields[1].manager}/{.metadata.managedFields[1].operation}")?;
    ensure!(patcher == "kubectl-patch/Update", "the patch is recorded: {patcher}");
    let config = cm_manifest("ssa", ns, &[("a", "1"), ("b", "2")]);
    let conflict = run(&ssa, Some(&config))?;
    let err = String::from_utf8_lossy(&conflict.stderr);
    ensure!(!conflict.status.success(), "a conflicting apply succeeded");
    ensure!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl-patch\" using v1")
            && err.contains(": .data.a")
            && err.contains("--force-conflicts"),
        "conflict report: {err}"
    );
    ensure!(get("ssa", "{.data.a}")? == "other");
    ok(&[&ssa[..], &["--force-conflicts"]].concat(), Some(&config))?;
    ensure!(get("ssa", "{.data.a}")? == "1", "forced apply takes a over");
    // Equal values are shared without conflict.
    ok(&["patch", "configmap", "ssa", "-n", ns, "--type=merge", "-p", r#"{"data":{"b":"2"}}"#], None)?;
    ok(&ssa, Some(&config))?;

    // A field dropped from the configuration goes.
    ok(&ssa, Some(&cm_manifest("ssa", ns, &[("a", "1")])))?;
    ensure!(get("ssa", "{.data}")? == r#"{"a":"1"}"#, "b removed");
    // kubectl diff --server-side: a dry-run apply compared with the live object.
    let same = run(&["diff", "--server-side", "-f", "-"], Some(&cm_manifest("ssa", ns, &[("a", "1")])))?;
    ensure!(same.status.code() == Some(0), "no difference: {}", stdout(&same));
    let changed = run(&["diff", "--server-side", "-f", "-"], Some(&cm_manifest("ssa", ns, &[("a", "2")])))?;
    ensure!(changed.status.code() == Some(1) && stdout(&changed).contains("+  a: \"2\""), "{}", stdout(&changed));
    ensure!(get("ssa", "{.data.a}")? == "1", "diff changes nothing");

    // From client-side apply to server-side apply on the same object.
    let csa = cm_manifest("moved", ns, &[("x", "1"), ("y", "2")]);
    ensure!(ok(&["apply", "-f", "-"], Some(&csa))?.contains("created"));
    let csa_owner = get("moved", "{.metadata.managedFields[0].manager}")?;
    ensure!(csa_owner == "kubectl-client-side-apply", "client-side apply's manager: {csa_owner}");
    ensure!(ok(&ssa, Some(&csa))?.contains("serverside-applied"));
    ok(&ssa, Some(&cm_manifest("moved", ns, &[("x", "1")])))?;
    ensure!(get("moved", "{.data}")? == r#"{"x":"1"}"#, "after the move, apply removes what it dropped");
    Ok(())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn server_side_apply_works_with(minor: u32) -> Result<()> {
    let server = Server::start()?;
    let k = Kubectl::new(minor, &server)?;
    k.ok_with(&["create", "-f", "-"], Some(&namespace_json("ssa")))?;
    server_side_apply_round(&k, &[], "ssa")?;
    // Associative lists: containers are owned one by one, by name.
    let deployment = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: ssa\nspec:\n  replicas: 2\n  \
             selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    \
             spec:\n      containers:\n      - name: c\n        image: {image}\n"
        )
    };
    k.ok_with(&["apply", "--server-side", "-f", "-"], Some(&deployment("nginx:1")))?;
    k.ok(&["set", "image", "deployment/web", "-n", "ssa", "c=nginx:2"])?;
    let err =
        String::from_utf8_lossy(&k.run(&["apply", "--server-side", "-f", "-"], Some(&deployment("nginx:3")))?.stderr)
            .into_owned();
    ensure!(
        err.contains("conflict with \"kubectl-set\"")
            && err.contains(".spec.template.spec.containers[name=\"c\"].image"),
        "container image conflict: {err}"
    );
    k.ok_with(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&deployment("nginx:3")))?;
    let image =
        k.ok(&["get", "deployment", "web", "-n", "ssa", "-o", "jsonpath={.spec.template.spec.containers[0].image}"])?;
    ensure!(image == "nginx:3", "forced image: {image}");
    // The status subresource applied (kubectl 1.33 has `apply --subresource`): the applier
    // owns what it applied there, beside the spec's owners.
    if minor >= 33 {
        let status = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: ssa\n\
                      status:\n  replicas: 2\n  readyReplicas: 1\n";
        k.ok_with(
            &["apply", "--server-side", "--subresource=status", "--field-manager=status-applier", "-f", "-"],
            Some(status),
        )?;
        let entry = "jsonpath={.metadata.managedFields[?(@.manager==\"status-applier\")]}";
        let entry: serde_json::Value =
            serde_json::from_str(&k.ok(&["get", "deployment", "web", "-n", "ssa", "-o", entry])?)?;
        ensure!(entry["operation"] == "Apply" && entry["subresource"] == "status", "{entry}");
        ensure!(entry["fieldsV1"]["f:status"]["f:readyReplicas"] == serde_json::json!({}), "{entry}");
        let ready = k.ok(&["get", "deployment", "web", "-n", "ssa", "-o", "jsonpath={.status.readyReplicas}"])?;
        ensure!(ready == "1", "applied status: {ready}");
    }
    // The same in a tenant, through the tenant prefix.
    k.ok_with(&["create", "-f", "-"], Some(&tenant_json("acme")))?;
    let prefix = format!("https://{}/tenants/acme", server.addr);
    k.ok_with(&["--server", &prefix, "create", "-f", "-"], Some(&namespace_json("ssa")))?;
    server_side_apply_round(&k, &["--server", &prefix], "ssa")?;
    let tenant = k.ok(&["--server", &prefix, "get", "cm", "ssa", "-n", "ssa", "-o", "jsonpath={.metadata.tenant}"])?;
    ensure!(tenant == "acme", "applied in the tenant: {tenant}");
    Ok(())
}

#[test]
fn kubectl_1_27_applies_server_side() -> Result<()> {
    server_side_apply_works_with(27)
}

#[test]
fn kubectl_1_30_applies_server_side() -> Result<()> {
    server_side_apply_works_with(30)
}

#[test]
fn kubectl_1_33_applies_server_side() -> Result<()> {
    server_side_apply_works_with(33)
}

/// Server-side apply over plain HTTP, through the tenant path: YAML bodies, the answers'
/// codes, the Status of a conflict and of bad options.
#[test]
fn apply_patches_over_http_follow_kubernetes() -> Result<()> {
    let server = Server::start()?;
    let k = Kubectl::new(33, &server)?;
    k.ok_with(&["create", "-f", "-"], Some(&tenant_json("acme")))?;
    k.ok_with(
        &["--server", &format!("https://{}/tenants/acme", server.addr), "create", "-f", "-"],
        Some(&namespace_json("team")),
    )?;
    let path = "/api/v1/tenants/acme/namespaces/team/configmaps/c";
    let apply = |query: &str, body: &str| {
        let headers = ["-X", "PATCH", "-H", "Content-Type: application/apply-patch+yaml", "--data-binary", body];
        curl_admin(&server, &format!("{path}{query}"), &headers)
    };
    let code = |head: &str| head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("").to_string();
    let yaml = "apiVersion: v1\nkind: ConfigMap\ndata:\n  k: v\n";
    let (head, body) = apply("?fieldManager=curl", yaml)?;
    ensure!(code(&head) == "201", "apply creates: {head}{body}");
    let obj: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(obj["metadata"]["tenant"] == "acme" && obj["metadata"]["name"] == "c" && obj["data"]["k"] == "v");
    ensure!(obj["metadata"]["managedFields"][0]["fieldsV1"] == serde_json::json!({"f:data": {"f:k": {}}}), "{body}");
    let (head, _) = apply("?fieldManager=curl", yaml)?;
    ensure!(code(&head) == "200", "apply again: {head}");

    let (head, body) = apply("", yaml)?;
    ensure!(code(&head) == "422", "no fieldManager: {head}");
    ensure!(body.contains("PatchOptions.meta.k8s.io \\\"\\\" is invalid: fieldManager: Required value"), "{body}");
    let merge = ["-X", "PATCH", "-H", "Content-Type: application/merge-patch+json", "-d", r#"{"data":{"k":"m"}}"#];
    let (head, body) = curl_admin(&server, &format!("{path}?force=true"), &merge)?;
    ensure!(code(&head) == "422" && body.contains("may not be specified for non-apply patch"), "{head}{body}");
    let (head, body) = curl_admin(&server, &format!("{path}?fieldManager=merger"), &merge)?;
    ensure!(code(&head) == "200", "{head}{body}");
    let (head, body) = apply("?fieldManager=curl", yaml)?;
    ensure!(code(&head) == "409", "conflict: {head}{body}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(status["reason"] == "Conflict", "{body}");
    let cause = &status["details"]["causes"][0];
    ensure!(cause["reason"] == "FieldManagerConflict" && cause["field"] == ".data.k", "{body}");
    ensure!(cause["message"].as_str().is_some_and(|m| m.starts_with("conflict with \"merger\" using v1")), "{body}");
    let (head, _) = apply("?fieldManager=curl&force=true&dryRun=All", yaml)?;
    ensure!(code(&head) == "200");
    ensure!(k.ok(&["get", "--raw", path])?.contains("\"k\":\"m\""), "a dry run changes nothing");
    let (head, body) = apply("?fieldManager=curl&force=true", yaml)?;
    ensure!(code(&head) == "200" && body.contains("\"k\":\"v\""), "forced: {head}{body}");

    // Bad bodies and unknown fields.
    let (head, _) = apply("?fieldManager=curl", "data: [\n")?;
    ensure!(code(&head) == "400", "malformed YAML: {head}");
    let (head, body) =
        apply("?fieldManager=curl&fieldValidation=Strict", "apiVersion: v1\nkind: ConfigMap\ndta: {}\n")?;
    ensure!(code(&head) == "400" && body.contains("unknown field"), "strict: {head}{body}");
    let (head, body) = apply("?fieldManager=curl", "apiVersion: v1\nkind: Secret\n")?;
    ensure!(code(&head) == "400", "another kind: {head}{body}");
    let (head, body) = apply("?fieldManager=curl", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  namespace: other\n")?;
    ensure!(code(&head) == "400" && body.contains("does not match the namespace"), "{head}{body}");
    Ok(())
}

#[test]
fn merge_patches_are_checked_for_the_unknown_fields_they_bring() -> Result<()> {
    let server = Server::start()?;
    let cms = "/api/v1/namespaces/default/configmaps";
    let json = ["-H", "Content-Type: application/json"];
    let merge = ["-X", "PATCH", "-H", "Content-Type: application/merge-patch+json"];
    let status_line = |head: &str| head.lines().next().unwrap_or("").to_string();
    let made = r#"{"metadata":{"name":"u"},"data":{"k":"1"},"dta":{"a":"b"}}"#;
    let (head, body) =
        curl_admin(&server, &format!("{cms}?fieldValidation=Ignore"), &[&json[..], &["-d", made]].concat())?;
    ensure!(status_line(&head).contains(" 201"), "{head}{body}");
    // Ignored is dropped, as Kubernetes' decoding drops it: neither answered nor stored.
    ensure!(!body.contains("dta") && !head.to_lowercase().contains("warning:"), "{head}{body}");
    let (head, body) = curl_admin(&server, &format!("{cms}/u"), &[])?;
    ensure!(
        status_line(&head).contains(" 200") && !body.contains("dta") && body.contains(r#""k":"1""#),
        "{head}{body}"
    );
    // A clean patch passes even under Strict: what it brings is checked.
    let clean = [&merge[..], &["-d", r#"{"data":{"k":"2"}}"#]].concat();
    let (head, body) = curl_admin(&server, &format!("{cms}/u?fieldValidation=Strict"), &clean)?;
    ensure!(status_line(&head).contains(" 200") && body.contains(r#""k":"2""#), "{head}{body}");
    // A patch bringing an unknown field: refused under Strict, a warning by default.
    let bad = [&merge[..], &["-d", r#"{"dta2":1}"#]].concat();
    let (head, body) = curl_admin(&server, &format!("{cms}/u?fieldValidation=Strict"), &bad)?;
    ensure!(status_line(&head).contains(" 400") && body.contains(r#"unknown field \"dta2\""#), "{head}{body}");
    let (head, body) = curl_admin(&server, &format!("{cms}/u"), &bad)?;
    ensure!(status_line(&head).contains(" 200"), "{head}{body}");
    ensure!(head.contains(r#"warning: 299 - "unknown field \"dta2\"""#), "{head}");
    // Warned about and dropped all the same (the rest of the patch applies).
    ensure!(!body.contains("dta2") && body.contains(r#""k":"2""#), "{head}{body}");
    let warned = [&merge[..], &["-d", r#"{"data":{"k":"3"},"spec":{"x":1}}"#]].concat();
    let (head, body) = curl_admin(&server, &format!("{cms}/u"), &warned)?;
    ensure!(head.contains(r#"warning: 299 - "unknown field \"spec\"""#), "{head}");
    let (_, body_after) = curl_admin(&server, &format!("{cms}/u"), &[])?;
    ensure!(
        !body.contains("spec") && !body_after.contains("spec") && body_after.contains(r#""k":"3""#),
        "{body_after}"
    );
    // Setting an unknown field to null removes it: nothing unknown is brought.
    let remove = [&merge[..], &["-d", r#"{"dta":null,"dta2":null}"#]].concat();
    let (head, body) = curl_admin(&server, &format!("{cms}/u?fieldValidation=Strict"), &remove)?;
    ensure!(status_line(&head).contains(" 200") && !body.contains("dta"), "{head}{body}");
    Ok(())
}

#[test]
fn metadata_alone_is_served_to_those_who_ask_for_it() -> Result<()> {
    let server = Server::start()?;
    let cms = "/api/v1/namespaces/default/configmaps";
    let json = ["-H", "Content-Type: application/json"];
    let made = r#"{"metadata":{"name":"m","labels":{"a":"b"}},"data":{"secretish":"value"}}"#;
    let (head, body) = curl_admin(&server, cms, &[&json[..], &["-d", made]].concat())?;
    ensure!(head.lines().next().is_some_and(|l| l.contains(" 201")), "{head}{body}");
    let accept = |t: &str| format!("Accept: {t}");
    let one = accept("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1");
    let list = accept("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1");
    let parse = |body: &str| serde_json::from_str::<serde_json::Value>(body).with_context(|| body.to_string());

    let (_, body) = curl_admin(&server, &format!("{cms}/m"), &["-H", &one])?;
    let got = parse(&body)?;
    ensure!(got["kind"] == "PartialObjectMetadata" && got["apiVersion"] == "meta.k8s.io/v1", "{got}");
    ensure!(got["metadata"]["labels"]["a"] == "b" && got.get("data").is_none(), "{got}");
    ensure!(got["metadata"]["resourceVersion"].as_str().is_some_and(|v| !v.is_empty()), "{got}");

    let (_, body) = curl_admin(&server, cms, &["-H", &list])?;
    let got = parse(&body)?;
    ensure!(got["kind"] == "PartialObjectMetadataList" && got["metadata"]["resourceVersion"].is_string(), "{got}");
    let item = &got["items"][0];
    ensure!(item["kind"] == "PartialObjectMetadata" && item["metadata"]["name"] == "m" && item.get("data").is_none());
    ensure!(!body.contains(r#""secretish":"value""#), "{body}");

    // One object's form for a list, with nothing else acceptable: 406; with a fallback,
    // whole objects.
    let (head, body) = curl_admin(&server, cms, &["-H", &one])?;
    ensure!(head.lines().next().is_some_and(|l| l.contains(" 406")) && body.contains("NotAcceptable"), "{head}{body}");
    let either = accept("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json");
    let (_, body) = curl_admin(&server, cms, &["-H", &either])?;
    ensure!(parse(&body)?["kind"] == "ConfigMapList" && body.contains(r#""secretish":"value""#), "{body}");

    // A watch sends each change's metadata alone.
    let (_, body) = curl_admin(&server, &format!("{cms}?watch=true&timeoutSeconds=1"), &["-H", &one])?;
    let event = parse(body.lines().next().context("no watch event")?)?;
    ensure!(event["type"] == "ADDED" && event["object"]["kind"] == "PartialObjectMetadata", "{event}");
    ensure!(event["object"]["metadata"]["name"] == "m" && event["object"].get("data").is_none(), "{body}");
    ensure!(!body.contains(r#""secretish":"value""#), "{body}");
    Ok(())
}

#[test]
fn bad_input_gets_a_clear_status_never_a_panic() -> Result<()> {
    let server = Server::start()?;
    let cms = "/api/v1/namespaces/default/configmaps";
    let big = format!("{{\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"k\":\"{}\"}}}}", "x".repeat(4 << 20));
    let big_file = server.dir.path().join("big.json");
    std::fs::write(&big_file, big)?;
    let big_arg = format!("@{}", big_file.display());
    let json = ["-H", "Content-Type: application/json"];
    let cases: Vec<(String, Vec<&str>, u16)> = vec![
        (format!("{cms}?limit=abc"), vec![], 400),
        (format!("{cms}?limit=-1"), vec![], 400),
        (format!("{cms}?watch=1&timeoutSeconds=soon"), vec![], 400),
        (format!("{cms}?watch=maybe"), vec![], 400),
        (format!("{cms}?labelSelector=a%20in%20("), vec![], 400),
        (format!("{cms}?fieldSelector=spec.bogus%3D1"), vec![], 400),
        (format!("{cms}?resourceVersion=abc"), vec![], 400),
        (format!("{cms}?continue=zzz"), vec![], 400),
        (cms.to_string(), [&json[..], &["-X", "POST", "-d", "{not json"]].concat(), 400),
        (cms.to_string(), [&json[..], &["-X", "POST", "-d", "[1,2]"]].concat(), 400),
        // Over HTTP/1.1: curl reports an HTTP/2 stream the server answers before reading it
        // whole as an error (kubectl's Go client reads the 413 either way).
        (cms.to_string(), [&json[..], &["--http1.1", "-X", "POST", "--data-binary", &big_arg]].concat(), 413),
        (cms.to_string(), vec!["-X", "POST", "-H", "Content-Type: text/plain", "-d", "{}"], 415),
        ("/api/v1/namespaces/default/widgets".to_string(), vec![], 404),
        ("/apis/no.such.group/v1/things".to_string(), vec![], 404),
        (format!("{cms}/x"), vec!["-X", "POST"], 405),
        (format!("{cms}/x"), [&json[..], &["-X", "DELETE", "-d", "{bad"]].concat(), 400),
        (format!("{cms}/x?propagationPolicy=Sideways"), vec!["-X", "DELETE"], 422),
        (
            format!("{cms}/x?fieldManager=m"),
            vec!["-X", "PATCH", "-H", "Content-Type: application/apply-patch+yaml", "-d", "a: [b"],
            400,
        ),
    ];
    for (path, args, code) in cases {
        let (head, body) = curl_admin(&server, &path, &args)?;
        let status_line = head.lines().next().unwrap_or("");
        ensure!(status_line.contains(&format!(" {code}")), "{path} {args:?}: {status_line}\n{body}");
        let status: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
        ensure!(status["kind"] == "Status" && status["code"] == code, "{path}: {body}");
    }
    // The server is still there.
    ensure!(curl_admin(&server, "/healthz", &[])?.1 == "ok");
    Ok(())
}

/// A bridge name (`<prefix><pid>`) and a /24 of the test's own: other tests' agents may
/// share the machine.
pub fn own_network(prefix: &str, base: u32) -> (String, String) {
    let pid = std::process::id();
    (format!("{prefix}{pid}"), format!("10.{}.{}.0/24", base + (pid >> 8) % 40, pid % 256))
}

/// Stops a cluster as a user does (Ctrl-C, waiting up to `patience`), then removes its
/// bridge and NAT table.
pub fn stop_with_network(cluster: &mut Proc, bridge: &str, patience: std::time::Duration) -> Result<()> {
    let stopped = cluster.interrupt(patience);
    // The node's pool of pod networks made ahead goes with its agent.
    let netns = Command::new("ip").args(["netns", "list"]).output()?;
    let pool_prefix = format!("atoll-pool-{bridge}-");
    let pooled: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with(&pool_prefix))
        .map(str::to_string)
        .collect();
    let links = Command::new("ip").args(["-o", "link", "show", "master", bridge]).output()?;
    let pooled_links = String::from_utf8_lossy(&links.stdout).lines().filter(|l| l.contains(": vp")).count();
    let _ = Command::new("ip").args(["link", "del", "dev", bridge]).status();
    let _ = Command::new("nft").args(["delete", "table", "ip", &format!("atoll-{bridge}")]).status();
    stopped?;
    ensure!(pooled.is_empty() && pooled_links == 0, "pooled pod networks left: {pooled:?}, {pooled_links} links");
    Ok(())
}

/// `atoll up` on `dir` with `args`, once it listens.
pub fn start_up(dir: &Path, args: &[&str]) -> Result<Proc> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["up", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut reader = BufReader::new(child.stdout.take().context("stdout")?);
    let cluster = Proc(child);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    ensure!(line.starts_with("listening on https://"), "{line}");
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    Ok(cluster)
}
