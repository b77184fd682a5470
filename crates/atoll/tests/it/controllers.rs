//! `atoll controllers` as its own process beside `atoll server`, observed with the real
//! kubectl: default ServiceAccounts in new namespaces of the system tenant and of a new
//! tenant, a new Tenant's `default` namespace, repair after a deletion, clean SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubectl() -> Result<PathBuf> {
    let dispatcher = std::env::var_os("PATH")
        .and_then(|p| p.to_str().map(str::to_string))
        .and_then(|p| p.split(':').map(|d| Path::new(d).join("kubectl")).find(|p| p.is_file()))
        .context("kubectl is not on the PATH; this test needs it")?;
    let bin = std::fs::canonicalize(dispatcher)?.parent().context("kubectl's folder")?.join("kubectl.1.33");
    ensure!(bin.is_file(), "{} is missing; this test needs kubectl 1.33", bin.display());
    Ok(bin)
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String)> {
        let mut child = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok((out.status.success(), text(&out.stdout), text(&out.stderr)))
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let (ok, out, err) = self.run(args, stdin)?;
        ensure!(ok, "kubectl {args:?} failed: {out}{err}");
        Ok(out)
    }

    /// Retries `args` until it succeeds (the controllers act asynchronously), 20 s at most.
    fn eventually(&self, args: &[&str]) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, out, err) = self.run(args, None)?;
            if ok {
                return Ok(out);
            }
            if Instant::now() > deadline {
                bail!("kubectl {args:?} kept failing: {err}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts `atoll server` on `listen`; returns it and the address it listens on.
fn start_server(dir: &Path, listen: &str) -> Result<(Proc, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["server", "--listen", listen, "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut reader = BufReader::new(child.stdout.take().context("stdout")?);
    let server = Proc(child);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let addr = line.trim().strip_prefix("listening on https://").context("no listening line")?.to_string();
    // Keep draining the server's output so it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    Ok((server, addr))
}

#[test]
fn controllers_create_default_service_accounts_and_tenant_namespaces() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, addr) = start_server(dir.path(), "127.0.0.1:0")?;
    let admin_config = dir.path().join("admin.kubeconfig");

    let mut controllers = Proc(
        Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["controllers", "--kubeconfig"])
            .arg(&admin_config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let admin = Kubectl { bin: kubectl()?, kubeconfig: admin_config, cache: tempfile::tempdir()? };

    // System tenant: the namespaces the server made, and a new one.
    admin.eventually(&["get", "serviceaccount", "default", "-n", "kube-system"])?;
    admin.ok(&["create", "namespace", "team-a"], None)?;
    let sa =
        admin.eventually(&["get", "serviceaccount", "default", "-n", "team-a", "-o", "jsonpath={.metadata.tenant}"])?;
    ensure!(sa == "system", "the account is the system tenant's: {sa}");

    // A new tenant gets its default namespace (seen through the tenant prefix).
    let tenant = r#"{"apiVersion":"atoll.io/v1","kind":"Tenant","metadata":{"name":"acme"}}"#;
    admin.ok(&["create", "-f", "-"], Some(tenant))?;
    let acme = format!("https://{addr}/tenants/acme");
    let ns =
        admin.eventually(&["--server", &acme, "get", "namespace", "default", "-o", "jsonpath={.metadata.tenant}"])?;
    ensure!(ns == "acme", "the default namespace is acme's: {ns}");
    admin.eventually(&["--server", &acme, "get", "serviceaccount", "default", "-n", "default"])?;

    // A user of the new tenant makes a namespace and finds its default ServiceAccount.
    let alice_config = dir.path().join("alice.kubeconfig");
    let issued = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["admin", "kubeconfig", "--tenant", "acme", "--user", "alice", "--data-dir"])
        .arg(dir.path())
        .arg("--output")
        .arg(&alice_config)
        .status()?;
    ensure!(issued.success(), "atoll admin kubeconfig failed");
    let alice = Kubectl { bin: kubectl()?, kubeconfig: alice_config, cache: tempfile::tempdir()? };
    alice.ok(&["create", "namespace", "web"], None)?;
    let theirs =
        alice.eventually(&["get", "serviceaccount", "default", "-n", "web", "-o", "jsonpath={.metadata.tenant}"])?;
    ensure!(theirs == "acme", "{theirs}");

    // Deleted: made again, as a new object.
    let uid = alice.ok(&["get", "serviceaccount", "default", "-n", "web", "-o", "jsonpath={.metadata.uid}"], None)?;
    alice.ok(&["delete", "serviceaccount", "default", "-n", "web"], None)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, new_uid, _) =
            alice.run(&["get", "serviceaccount", "default", "-n", "web", "-o", "jsonpath={.metadata.uid}"], None)?;
        if ok && !new_uid.is_empty() && new_uid != uid {
            break;
        }
        ensure!(Instant::now() < deadline, "the deleted default ServiceAccount was not made again");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The API server dies and comes back on the same address: the controllers reconnect,
    // watch again from where they were, and act on what happens next.
    drop(server);
    let (server, again) = start_server(dir.path(), &addr)?;
    ensure!(again == addr, "restarted on {again}, not {addr}");
    admin.ok(&["create", "namespace", "after-restart"], None)?;
    admin.eventually(&["get", "serviceaccount", "default", "-n", "after-restart"])?;

    // SIGTERM stops the controllers cleanly.
    let pid = controllers.0.id().to_string();
    ensure!(Command::new("kill").args(["-TERM", &pid]).status()?.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = controllers.0.try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "the controllers did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut controllers.0.stderr.take().context("stderr")?, &mut log)?;
    ensure!(status.success(), "the controllers exited with {status}: {log}");
    drop(server);
    Ok(())
}
