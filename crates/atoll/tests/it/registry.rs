//! Image pulls against Debian's real `docker-registry` (distribution 2.8) on loopback, over
//! TLS with a CA the test makes and htpasswd basic auth: `atoll image push` seeds it with
//! the local busybox image, then `atoll up`'s node agent runs a pod from it with an
//! `imagePullSecrets` Secret made by kubectl; without the secret, or with a digest the
//! registry does not have, the pod waits in `ErrImagePull`/`ImagePullBackOff` with the
//! kubelet's events. Also measures pull throughput for a 64 MiB layer, beside curl.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::server::{Kubectl, Proc, kubectl_binary};

pub(crate) const USER: &str = "alice";
pub(crate) const PASSWORD: &str = "s3cret-pull";

fn need(program: &str, package: &str) -> Result<PathBuf> {
    let found =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|p| p.is_file()));
    found.with_context(|| format!("{program} is missing: install Debian's {package} (scripts/lib.sh does)"))
}

pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn atoll(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_atoll"));
    c.args(args);
    c
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
fn make_tls(dir: &Path) -> Result<()> {
    std::fs::write(
        dir.join("ca.cnf"),
        "[req]\ndistinguished_name=dn\nx509_extensions=v3\nprompt=no\n[dn]\nCN=atoll-registry-test-ca\n\
         [v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509", "-config", "ca.cnf"])
        .args(ec)
        .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]))?;
    run(Command::new("openssl").current_dir(dir).args(["req", "-new"]).args(ec).args([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]))?;
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]))?;
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `docker-registry` on 127.0.0.1 with TLS and htpasswd auth; returns it and its address.
pub(crate) fn start_registry(dir: &Path) -> Result<(Proc, String)> {
    let registry = need("docker-registry", "docker-registry")?;
    need("htpasswd", "apache2-utils")?;
    need("openssl", "openssl")?;
    make_tls(dir)?;
    // The registry reads bcrypt hashes only.
    let line = run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]))?;
    std::fs::write(dir.join("htpasswd"), line.trim())?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let d = dir.display();
    std::fs::write(
        dir.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n\
             http:\n  addr: {addr}\n  tls:\n    certificate: {d}/server.pem\n    key: {d}/server.key\n\
             auth:\n  htpasswd:\n    realm: atoll-test\n    path: {d}/htpasswd\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("registry.log"))?;
    let child = Command::new(registry)
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting docker-registry")?;
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(&addr).is_err() {
        ensure!(
            Instant::now() < deadline,
            "docker-registry did not listen on {addr}: {}",
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proc, addr))
}

/// A Docker config file holding the test user's credentials for `addr`.
pub(crate) fn docker_config(dir: &Path, addr: &str) -> Result<PathBuf> {
    let path = dir.join("docker-config.json");
    let auth = run(Command::new("sh").args(["-c", &format!("printf %s '{USER}:{PASSWORD}' | base64 -w0")]))?;
    std::fs::write(&path, format!(r#"{{"auths": {{"{addr}": {{"auth": "{auth}"}}}}}}"#))?;
    Ok(path)
}

/// An OCI layout holding `name`: one uncompressed layer with `mib` MiB of incompressible bytes.
fn big_layout(dir: &Path, name: &str, mib: usize) -> Result<PathBuf> {
    let content = dir.join("content");
    std::fs::create_dir_all(&content)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(content.join("big.bin"))?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..mib * (1 << 20) / 8 {
        // xorshift64: cheap bytes no compressor can shrink.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes())?;
    }
    f.flush()?;
    drop(f);
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let tar = dir.join("layer.tar");
    run(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&content).arg("big.bin"))?;
    let put = |path: &Path| -> Result<(String, u64)> {
        let sum = run(Command::new("sha256sum").arg(path))?;
        let hex = sum.split_whitespace().next().context("sha256sum")?.to_string();
        std::fs::copy(path, blobs.join(&hex))?;
        Ok((format!("sha256:{hex}"), std::fs::metadata(path)?.len()))
    };
    let (layer, layer_size) = put(&tar)?;
    let config_file = dir.join("config.json");
    std::fs::write(
        &config_file,
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer}"]}}}}"#
        ),
    )?;
    let (config, config_size) = put(&config_file)?;
    let manifest_file = dir.join("manifest.json");
    std::fs::write(
        &manifest_file,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{layer_size}}}]}}"#
        ),
    )?;
    let (manifest, manifest_size) = put(&manifest_file)?;
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"{name}"}}}}]}}"#
        ),
    )?;
    Ok(layout)
}

#[test]
fn pods_pull_from_a_real_registry_with_pull_secrets() -> Result<()> {
    let reg_dir = tempfile::tempdir()?;
    let (_registry, addr) = start_registry(reg_dir.path())?;
    let ca = reg_dir.path().join("ca.pem");
    let creds = docker_config(reg_dir.path(), &addr)?;
    let ca_arg = ca.to_str().context("path")?;
    let creds_arg = creds.to_str().context("path")?;

    // Seed the registry with the local busybox image, as `v1` and `v2`.
    let seed = tempfile::tempdir()?;
    let seed_arg = seed.path().to_str().context("path")?;
    run(&mut atoll(&["image", "build-busybox", "--data-dir", seed_arg]))?;
    let image = format!("{addr}/team/busybox");
    let refused = atoll(&["image", "push", "busybox", &format!("{image}:v1"), "--data-dir", seed_arg])
        .args(["--registry-ca", ca_arg])
        .output()?;
    ensure!(!refused.status.success(), "a push without credentials must be refused");
    let refused = String::from_utf8_lossy(&refused.stderr);
    ensure!(refused.contains("authorization failed"), "{refused}");
    for tag in ["v1", "v2"] {
        let out = run(atoll(&["image", "push", "busybox", &format!("{image}:{tag}"), "--data-dir", seed_arg]).args([
            "--registry-ca",
            ca_arg,
            "--registry-config",
            creds_arg,
        ]))?;
        ensure!(out.starts_with("pushed "), "{out}");
    }
    // Without the test CA, the registry's certificate is not trusted.
    let untrusted = atoll(&["image", "pull", &format!("{image}:v1"), "--data-dir", seed_arg])
        .args(["--registry-config", creds_arg])
        .output()?;
    ensure!(!untrusted.status.success(), "a pull from an untrusted registry must fail");

    // The cluster: its node agent trusts the CA but has no credentials of its own.
    let dir = tempfile::tempdir()?;
    let node = "registry-e2e-node";
    let pid = std::process::id();
    let (bridge, cidr) = (format!("atr{pid}"), format!("10.{}.{}.0/24", 150 + (pid >> 8) % 40, pid % 256));
    let mut child = atoll(&["up", "--listen", "127.0.0.1:0", "--node-name", node, "--bridge", &bridge])
        .args(["--pod-cidr", &cidr, "--registry-ca", ca_arg, "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut reader = BufReader::new(child.stdout.take().context("stdout")?);
    let cluster = Proc(child);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let api = line.trim().strip_prefix("listening on https://").context("no listening line")?.to_string();
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let result = cluster_part(&dir, &api, node, &image, &addr);
    // Stopped as a user stops it, so its agent removes what its pods left (sandboxes and
    // network namespaces of pods whose pulls failed included); killing it would leak them.
    let mut cluster = cluster;
    let stopped = cluster.interrupt(Duration::from_secs(60));
    let _ = Command::new("ip").args(["link", "del", "dev", &bridge]).status();
    let _ = Command::new("nft").args(["delete", "table", "ip", &format!("atoll-{bridge}")]).status();
    result?;
    stopped?;

    throughput(reg_dir.path(), &addr, ca_arg, creds_arg)
}

fn cluster_part(dir: &tempfile::TempDir, api: &str, node: &str, image: &str, registry: &str) -> Result<()> {
    let admin = Kubectl {
        bin: kubectl_binary(33)?,
        kubeconfig: dir.path().join("admin.kubeconfig"),
        cache: tempfile::tempdir()?,
    };
    admin.eventually(&["get", "node", node])?;
    // The pods and their secret live in a tenant; the agent reads the secret there.
    admin.ok_with(
        &["apply", "-f", "-"],
        Some(r#"{"apiVersion":"atoll.io/v1","kind":"Tenant","metadata":{"name":"acme"}}"#),
    )?;
    let server = format!("--server=https://{api}/tenants/acme");
    let k = |args: &[&str]| -> Result<String> {
        let mut all = vec![server.as_str()];
        all.extend_from_slice(args);
        admin.ok(&all)
    };
    let k_in = |args: &[&str], stdin: &str| -> Result<String> {
        let mut all = vec![server.as_str()];
        all.extend_from_slice(args);
        admin.ok_with(&all, Some(stdin))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while k(&["get", "namespace", "default"]).is_err() {
        ensure!(Instant::now() < deadline, "tenant acme got no default namespace");
        std::thread::sleep(Duration::from_millis(200));
    }
    k(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={registry}"),
        &format!("--docker-username={USER}"),
        &format!("--docker-password={PASSWORD}"),
    ])?;
    let pod = |name: &str, image: &str, secret: bool| {
        let secrets = if secret { r#", "imagePullSecrets": [{"name": "regcred"}]"# } else { "" };
        format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
                "spec": {{"nodeName": "{node}", "restartPolicy": "Never"{secrets},
                          "containers": [{{"name": "main", "image": "{image}",
                                          "command": ["sh", "-c", "echo pulled and running"]}}]}}}}"#
        )
    };
    k_in(&["create", "-f", "-"], &pod("pulled", &format!("{image}:v1"), true))?;
    let policy = k(&["get", "pod", "pulled", "-o", "jsonpath={.spec.containers[0].imagePullPolicy}"])?;
    ensure!(policy == "IfNotPresent", "a tagged image defaults to IfNotPresent, got {policy:?}");
    k(&["wait", "pod/pulled", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=90s"])?;
    // The image is reported by its repository digest, as the kubelet reports containerd's.
    let image_id = k(&["get", "pod", "pulled", "-o", "jsonpath={.status.containerStatuses[0].imageID}"])?;
    ensure!(image_id.starts_with(&format!("{image}@sha256:")) && image_id.len() == image.len() + 72, "{image_id}");
    let describe = k(&["describe", "pod", "pulled"])?;
    for want in [format!("Pulling image \"{image}:v1\""), format!("Successfully pulled image \"{image}:v1\" in ")] {
        ensure!(describe.contains(&want), "describe lacks {want:?}:\n{describe}");
    }

    // The image is on the node now, but only for holders of the credentials that pulled
    // it: a pod without the secret asks the registry (and is refused), even with
    // IfNotPresent; with Never it may not use it at all.
    k_in(&["create", "-f", "-"], &pod("borrow", &format!("{image}:v1"), false))?;
    let message = wait_reason(&k, "borrow", &["ErrImagePull", "ImagePullBackOff"], Duration::from_secs(60))?;
    ensure!(message.contains("authorization failed"), "{message}");
    let never = pod("borrownever", &format!("{image}:v1"), false)
        .replace(r#""image": ""#, r#""imagePullPolicy": "Never", "image": ""#);
    k_in(&["create", "-f", "-"], &never)?;
    wait_reason(&k, "borrownever", &["ErrImageNeverPull"], Duration::from_secs(60))?;
    // With the secret, a second pod uses the image already there.
    k_in(&["create", "-f", "-"], &pod("again", &format!("{image}:v1"), true))?;
    k(&["wait", "pod/again", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=60s"])?;
    let describe = k(&["describe", "pod", "again"])?;
    ensure!(!describe.contains("Pulling image"), "no pull was needed:\n{describe}");
    ensure!(describe.contains("already present on machine"), "{describe}");

    // No secret: the registry refuses, the pod waits, the events say why.
    k_in(&["create", "-f", "-"], &pod("nosecret", &format!("{image}:v2"), false))?;
    wait_reason(&k, "nosecret", &["ImagePullBackOff"], Duration::from_secs(60))?;
    let describe = k(&["describe", "pod", "nosecret"])?;
    for want in [
        format!("Failed to pull image \"{image}:v2\""),
        "authorization failed".to_string(),
        "Error: ErrImagePull".into(),
        format!("Back-off pulling image \"{image}:v2\""),
        "Error: ImagePullBackOff".into(),
    ] {
        ensure!(describe.contains(&want), "describe lacks {want:?}:\n{describe}");
    }
    ensure!(!describe.contains(PASSWORD), "a credential leaked into the pod's description");

    // With the secret but a digest the registry does not hold: the pull fails.
    let wrong = format!("{image}@sha256:{}", "0".repeat(64));
    k_in(&["create", "-f", "-"], &pod("wrongdigest", &wrong, true))?;
    let message = wait_reason(&k, "wrongdigest", &["ErrImagePull", "ImagePullBackOff"], Duration::from_secs(60))?;
    ensure!(message.contains("not found"), "{message}");
    let phase = k(&["get", "pod", "wrongdigest", "-o", "jsonpath={.status.phase}"])?;
    ensure!(phase == "Pending", "{phase}");

    // A service account's pull secrets go to the pods that name none (ServiceAccount admission).
    k(&["create", "serviceaccount", "puller"])?;
    k(&["patch", "serviceaccount", "puller", "-p", r#"{"imagePullSecrets": [{"name": "regcred"}]}"#])?;
    let by_account = pod("byaccount", &format!("{image}:v2"), false)
        .replace(r#""restartPolicy""#, r#""serviceAccountName": "puller", "restartPolicy""#);
    k_in(&["create", "-f", "-"], &by_account)?;
    let secrets = k(&["get", "pod", "byaccount", "-o", "jsonpath={.spec.imagePullSecrets[*].name}"])?;
    ensure!(secrets == "regcred", "the pod got its account's pull secrets: {secrets:?}");
    k(&["wait", "pod/byaccount", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=90s"])?;
    Ok(())
}

/// Waits until the pod's container waits for one of `reasons`; returns its message.
fn wait_reason(k: &dyn Fn(&[&str]) -> Result<String>, pod: &str, reasons: &[&str], limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let out = k(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}",
        ])?;
        let (reason, message) = out.split_once('|').unwrap_or((&out, ""));
        if reasons.contains(&reason) {
            return Ok(message.to_string());
        }
        if Instant::now() > deadline {
            bail!("pod {pod} never waited with {reasons:?}; last: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Pull throughput for a 64 MiB layer over TLS from the real registry, beside curl
/// fetching the same blob (the peer), printed for BENCHMARKS.md.
fn throughput(dir: &Path, addr: &str, ca: &str, creds: &str) -> Result<()> {
    let work = tempfile::tempdir_in(dir)?;
    let layout = big_layout(work.path(), "big:v1", 64)?;
    let seed = work.path().join("seed");
    let seed_arg = seed.to_str().context("path")?;
    run(atoll(&["image", "import"]).arg(&layout).args(["--data-dir", seed_arg]))?;
    let target = format!("{addr}/team/big:v1");
    run(atoll(&["image", "push", "big:v1", &target, "--data-dir", seed_arg]).args([
        "--registry-ca",
        ca,
        "--registry-config",
        creds,
    ]))?;
    let fresh = work.path().join("fresh");
    let out = run(atoll(&["image", "pull", &target, "--data-dir", fresh.to_str().context("path")?]).args([
        "--registry-ca",
        ca,
        "--registry-config",
        creds,
    ]))?;
    ensure!(out.contains("2 blobs fetched"), "{out}");
    eprintln!("atoll image pull: {}", out.trim());
    let list = run(&mut atoll(&["image", "list", "--data-dir", fresh.to_str().context("path")?]))?;
    ensure!(list.contains(&target), "{list}");
    // The peer: curl fetching the layer blob alone (no manifest, no digest check).
    let index = std::fs::read_to_string(layout.join("index.json"))?;
    let manifest_digest = index.split("\"digest\":\"").nth(1).and_then(|s| s.split('"').next()).context("digest")?;
    let manifest = std::fs::read_to_string(layout.join("blobs/sha256").join(&manifest_digest["sha256:".len()..]))?;
    let layer = manifest.rsplit("\"digest\":\"").next().and_then(|s| s.split('"').next()).context("layer")?;
    let curl = run(Command::new("curl").args([
        "-sS",
        "--fail",
        "--cacert",
        ca,
        "-u",
        &format!("{USER}:{PASSWORD}"),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} bytes in %{time_total}s",
        &format!("https://{addr}/v2/team/big/blobs/{layer}"),
    ]))?;
    eprintln!("curl (peer, layer blob only): {curl}");
    Ok(())
}
