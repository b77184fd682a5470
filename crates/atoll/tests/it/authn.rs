//! Authentication beyond certificates, driven by the real kubectl 1.27/1.30/1.33:
//! service-account tokens from `kubectl create token`, Users with passwords logging in
//! through `atoll login` (kubectl's credential plugin), the auth-controller's bindings, the
//! throttle on failed logins, and a password that never shows anywhere.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::server::{Kubectl, Proc, kubectl_binary, tenant_admins_json, tenant_json};

/// `atoll server` with its log (at debug level) kept in a file, and the controllers.
struct LoggedServer {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LoggedServer {
    fn start() -> Result<LoggedServer> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("server.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("ATOLL_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut reader = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let addr = line.trim().strip_prefix("listening on https://").context("no listening line")?.to_string();
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Ok(LoggedServer { child, addr, dir, log })
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ca(&self) -> PathBuf {
        self.data().join("pki/ca.crt")
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn admin(&self, minor: u32) -> Result<Kubectl> {
        Ok(Kubectl {
            bin: kubectl_binary(minor)?,
            kubeconfig: self.data().join("admin.kubeconfig"),
            cache: tempfile::tempdir()?,
        })
    }

    fn controllers(&self) -> Result<Proc> {
        let child = Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["controllers", "--kubeconfig"])
            .arg(self.data().join("admin.kubeconfig"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Proc(child))
    }

    /// A kubectl that presents `token` and nothing else (no certificate).
    fn with_token(&self, token: &str, server: &str, minor: u32, name: &str) -> Result<Kubectl> {
        let path = self.dir.path().join(format!("{name}-{minor}.kubeconfig"));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    \
             certificate-authority: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  \
             context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
            ca = self.ca().display()
        );
        std::fs::write(&path, config)?;
        Ok(Kubectl { bin: kubectl_binary(minor)?, kubeconfig: path, cache: tempfile::tempdir()? })
    }

    /// A kubectl whose credentials come from `atoll login` for `tenant/user`, with the
    /// password in `password_file`.
    fn login(&self, tenant: &str, user: &str, password_file: &Path, minor: u32) -> Result<Kubectl> {
        let out = Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["login", "--server", &self.url(), "--certificate-authority"])
            .arg(self.ca())
            .args(["--user", &format!("{tenant}/{user}"), "--password-file"])
            .arg(password_file)
            .arg("--print-kubeconfig")
            .output()?;
        ensure!(out.status.success(), "atoll login --print-kubeconfig: {}", String::from_utf8_lossy(&out.stderr));
        let path = self.dir.path().join(format!("{user}@{tenant}-{minor}.kubeconfig"));
        std::fs::write(&path, &out.stdout)?;
        Ok(Kubectl { bin: kubectl_binary(minor)?, kubeconfig: path, cache: tempfile::tempdir()? })
    }
}

fn whoami(k: &Kubectl) -> Result<Value> {
    Ok(serde_json::from_str(&k.ok(&["auth", "whoami", "-o", "json"])?)?)
}

fn eventually(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check()? {
        ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn refused(err: &str) -> bool {
    err.contains("Unauthorized") || err.contains("must be logged in")
}

#[test]
fn service_account_tokens_work_with_kubectl_and_die_with_their_account() -> Result<()> {
    let server = LoggedServer::start()?;
    let admin = server.admin(33)?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_json("acme")))?;
    let acme = format!("{}/tenants/acme", server.url());
    admin.ok(&["--server", &acme, "create", "namespace", "apps"])?;
    admin.ok(&["--server", &acme, "-n", "apps", "create", "serviceaccount", "robot"])?;
    // Let the robot read config maps in its namespace.
    admin.ok(&[
        "--server",
        &acme,
        "-n",
        "apps",
        "create",
        "role",
        "read",
        "--verb=get,list",
        "--resource=configmaps",
    ])?;
    admin.ok(&[
        "--server",
        &acme,
        "-n",
        "apps",
        "create",
        "rolebinding",
        "robot-read",
        "--role=read",
        "--serviceaccount=apps:robot",
    ])?;
    admin.ok(&["--server", &acme, "-n", "apps", "create", "configmap", "settings", "--from-literal=k=v"])?;

    let mut tokens = Vec::new();
    for minor in [27, 30, 33] {
        let k = server.admin(minor)?;
        let token = k.ok(&["--server", &acme, "-n", "apps", "create", "token", "robot", "--duration=15m"])?;
        let token = token.trim().to_string();
        // A JWT whose claims name the account the way Kubernetes' do.
        let payload = token.split('.').nth(1).context("a JWT")?;
        let payload: Value = serde_json::from_slice(&base64_url(payload)?)?;
        ensure!(payload["kubernetes.io"]["serviceaccount"]["name"] == "robot", "{payload}");
        ensure!(payload["atoll.io"]["tenant"] == "acme", "{payload}");
        let lifetime = payload["exp"].as_i64().unwrap_or(0) - payload["iat"].as_i64().unwrap_or(0);
        ensure!(lifetime == 900, "--duration=15m is honoured: {lifetime}");

        let robot = server.with_token(&token, &server.url(), minor, "robot")?;
        let me = whoami(&robot)?;
        ensure!(me["status"]["userInfo"]["username"] == "system:serviceaccount:apps:robot", "{me}");
        let groups = me["status"]["userInfo"]["groups"].to_string();
        ensure!(groups.contains("system:serviceaccounts:apps") && groups.contains("system:authenticated"), "{me}");
        ensure!(me["status"]["userInfo"]["extra"]["atoll.io/tenant"] == json!(["acme"]), "{me}");
        ensure!(robot.ok(&["-n", "apps", "get", "configmap", "settings", "-o", "name"])?.contains("settings"));
        let err = robot.fails(&["-n", "apps", "delete", "configmap", "settings"])?;
        ensure!(err.contains("forbidden"), "RBAC still decides: {err}");
        tokens.push((minor, token));
    }
    // Too short a token is refused, as in Kubernetes.
    let err = admin.fails(&["--server", &acme, "-n", "apps", "create", "token", "robot", "--duration=1m"])?;
    ensure!(err.contains("10 minutes"), "{err}");
    // A token does not reach another tenant, whatever URL it uses.
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_json("globex")))?;
    let (minor, token) = &tokens[2];
    let elsewhere = server.with_token(token, &format!("{}/tenants/globex", server.url()), *minor, "robot-globex")?;
    let err = elsewhere.fails(&["get", "configmaps", "-n", "default"])?;
    ensure!(err.contains("Forbidden") || err.contains("forbidden"), "{err}");

    // Deleting the account kills every token it had, at once.
    admin.ok(&["--server", &acme, "-n", "apps", "delete", "serviceaccount", "robot"])?;
    for (minor, token) in &tokens {
        let robot = server.with_token(token, &server.url(), *minor, "robot-dead")?;
        let err = robot.fails(&["auth", "whoami"])?;
        ensure!(refused(&err), "kubectl 1.{minor} after the account went: {err}");
    }
    // A new account of the same name is another account: the old tokens stay dead.
    admin.ok(&["--server", &acme, "-n", "apps", "create", "serviceaccount", "robot"])?;
    let robot = server.with_token(&tokens[0].1, &server.url(), 33, "robot-again")?;
    ensure!(refused(&robot.fails(&["auth", "whoami"])?), "an old token does not fit a new account");
    // A garbled token is refused, never treated as anonymous or as someone else.
    let forged = format!("{}x", tokens[0].1);
    let robot = server.with_token(&forged, &server.url(), 33, "forged")?;
    ensure!(refused(&robot.fails(&["get", "namespaces"])?));
    Ok(())
}

fn base64_url(text: &str) -> Result<Vec<u8>> {
    // kubectl is no base64 tool; decode by hand (URL alphabet, no padding).
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let v = alphabet.iter().position(|a| *a == c).context("not base64url")? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Ok(out)
}

const PASSWORD: &str = "Tr0ub4dor-and-a-horse";

fn user_json(name: &str, password: Option<&str>) -> String {
    let mut spec = json!({"displayName": "Ann A.", "groups": ["devs"]});
    if let Some(p) = password {
        spec["password"] = json!(p);
    }
    json!({"apiVersion": "atoll.io/v1", "kind": "User", "metadata": {"name": name}, "spec": spec}).to_string()
}

/// curl's `-u` (HTTP basic) against `path`; returns (status code, headers and body).
fn curl_basic(server: &LoggedServer, user: &str, password: &str, path: &str) -> Result<(u16, String)> {
    let method = if path == "/atoll/login" { "POST" } else { "GET" };
    let out = Command::new("curl")
        .args(["-s", "-i", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(server.ca())
        .args(["-u", &format!("{user}:{password}")])
        .arg(format!("{}{path}", server.url()))
        .output()
        .context("curl is needed for this test")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text.lines().last().and_then(|l| l.trim().parse().ok()).context("no status code")?;
    Ok((code, text))
}

#[test]
fn users_log_in_work_in_their_namespaces_and_leave_nothing_behind() -> Result<()> {
    let server = LoggedServer::start()?;
    let _controllers = server.controllers()?;
    let admin = server.admin(33)?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_json("acme")))?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_json("globex")))?;
    let acme = format!("{}/tenants/acme", server.url());
    // Client-side apply copies the object into an annotation: the password must not follow.
    admin.ok_with(&["--server", &acme, "apply", "-f", "-"], Some(&user_json("ann", Some(PASSWORD))))?;
    admin.ok_with(&["--server", &acme, "create", "-f", "-"], Some(&user_json("bob", Some("bobs-own-password"))))?;

    // The password is write-only: not in get (YAML, JSON, table), list, watch or apply's copy.
    let mut shown = String::new();
    for args in [
        vec!["get", "users", "-o", "yaml"],
        vec!["get", "user", "ann", "-o", "json"],
        vec!["get", "users"],
        vec!["get", "users", "-o", "wide", "--show-managed-fields"],
        vec!["get", "users", "-o", "jsonpath={.items[*].metadata.annotations}"],
    ] {
        let mut all = vec!["--server", acme.as_str()];
        all.extend(args);
        shown.push_str(&admin.ok(&all)?);
    }
    let watch = admin
        .command(&["--server", &acme, "get", "users", "--watch", "-o", "json", "--request-timeout=3s"])
        .output()?;
    shown.push_str(&String::from_utf8_lossy(&watch.stdout));
    ensure!(shown.contains("\"ann\"") || shown.contains("ann"), "the reads saw the user: {shown}");
    ensure!(!shown.contains(PASSWORD) && !shown.contains("passwordHash") && !shown.contains("$argon2"), "{shown}");
    // A re-apply with the same password changes nothing (once the auth-controller has put
    // its finalizer on the user).
    eventually("the auth-controller holds ann", || {
        let f = admin.ok(&["--server", &acme, "get", "user", "ann", "-o", "jsonpath={.metadata.finalizers}"])?;
        Ok(f.contains("atoll.io/auth"))
    })?;
    let before = admin.ok(&["--server", &acme, "get", "user", "ann", "-o", "jsonpath={.metadata.resourceVersion}"])?;
    admin.ok_with(&["--server", &acme, "apply", "-f", "-"], Some(&user_json("ann", Some(PASSWORD))))?;
    let after = admin.ok(&["--server", &acme, "get", "user", "ann", "-o", "jsonpath={.metadata.resourceVersion}"])?;
    ensure!(before == after, "re-applying the same password is no change ({before} → {after})");
    admin.ok(&["--server", &acme, "label", "user", "ann", "team=red"])?;

    // Stock kubectl sends no kubeconfig username/password any more; `atoll login` trades them
    // for a token, as kubectl's credential plugin.
    let password_file = server.dir.path().join("ann.password");
    std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
    for minor in [27, 30, 33] {
        let ann = server.login("acme", "ann", &password_file, minor)?;
        let me = whoami(&ann)?;
        ensure!(me["status"]["userInfo"]["username"] == "ann", "kubectl 1.{minor}: {me}");
        ensure!(me["status"]["userInfo"]["groups"].to_string().contains("devs"), "{me}");
        ensure!(me["status"]["userInfo"]["extra"]["atoll.io/tenant"] == json!(["acme"]), "{me}");
    }
    let ann = server.login("acme", "ann", &password_file, 33)?;
    // The auth-controller binds a new User to its tenant's user role.
    eventually("ann may create namespaces", || {
        Ok(ann.run(&["auth", "can-i", "create", "namespaces"], None)?.stdout.starts_with(b"yes"))
    })?;
    ensure!(ann.run(&["auth", "can-i", "create", "configmaps", "-n", "default"], None)?.stdout.starts_with(b"no"));
    let list = ann.ok(&["auth", "can-i", "--list"])?;
    ensure!(list.lines().any(|l| l.starts_with("namespaces ") && l.contains("[get create delete]")), "{list}");
    // The Network kind may not be served yet; the rule names it all the same.
    ensure!(list.lines().any(|l| l.starts_with("networks.atoll.io ") && l.contains("[get list watch]")), "{list}");

    // A namespace she creates is hers to work in (the controller's Role and RoleBinding).
    ann.ok(&["create", "namespace", "team"])?;
    let ns = admin.ok(&["--server", &acme, "get", "namespace", "team", "-o", "json"])?;
    let ns: Value = serde_json::from_str(&ns)?;
    ensure!(ns["metadata"]["annotations"]["atoll.io/creator"] == "ann", "{ns}");
    eventually("ann may work in her namespace", || {
        Ok(ann.run(&["-n", "team", "create", "configmap", "c1", "--from-literal=a=b"], None)?.status.success())
    })?;
    ann.ok(&["-n", "team", "get", "configmaps", "c1"])?;
    ann.ok(&["-n", "team", "create", "serviceaccount", "helper"])?;
    // The creator annotation is the server's: a client cannot claim or change it.
    let err = ann.fails(&["annotate", "namespace", "team", "atoll.io/creator=bob", "--overwrite"])?;
    ensure!(err.contains("forbidden"), "ann may not update namespaces at all: {err}");
    admin.ok(&["--server", &acme, "annotate", "namespace", "team", "atoll.io/creator=bob", "--overwrite"])?;
    let ns = admin.ok(&["--server", &acme, "get", "namespace", "team", "-o", "jsonpath={.metadata.annotations}"])?;
    ensure!(ns.contains("\"atoll.io/creator\":\"ann\""), "even an administrator cannot rewrite it: {ns}");
    let forged = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "forged", "annotations": {"atoll.io/creator": "bob"}}})
    .to_string();
    ann.ok_with(&["create", "-f", "-"], Some(&forged))?;
    let ns = admin.ok(&["--server", &acme, "get", "namespace", "forged", "-o", "jsonpath={.metadata.annotations}"])?;
    ensure!(ns.contains("\"atoll.io/creator\":\"ann\""), "the creator is who created it: {ns}");

    // Refused elsewhere in her tenant and in any other tenant.
    let err = ann.fails(&["-n", "default", "get", "configmaps"])?;
    ensure!(err.contains("forbidden"), "{err}");
    let err = ann.fails(&["--server", &format!("{}/tenants/globex", server.url()), "get", "namespaces", "default"])?;
    ensure!(err.contains("forbidden") || err.contains("Forbidden"), "{err}");
    ensure!(!err.contains("globex\" not found"), "nothing about the other tenant leaks: {err}");
    // Bob is not allowed into ann's namespace.
    let bob_file = server.dir.path().join("bob.password");
    std::fs::write(&bob_file, "bobs-own-password\n")?;
    let bob = server.login("acme", "bob", &bob_file, 33)?;
    ensure!(bob.fails(&["-n", "team", "get", "configmaps"])?.contains("forbidden"));

    // Wrong passwords: 401 without saying whether the user exists, then 429 with Retry-After.
    let (code, _) = curl_basic(&server, "acme/ann", "wrong", "/atoll/login")?;
    ensure!(code == 401, "a wrong password is 401, got {code}");
    let (code, _) = curl_basic(&server, "acme/nobody", "wrong", "/atoll/login")?;
    ensure!(code == 401, "an unknown user is the same 401, got {code}");
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(curl_basic(&server, "acme/ann", "wrong", "/atoll/login")?);
    }
    let throttled = answers.iter().find(|(code, _)| *code == 429).context("repeated failures are throttled")?;
    ensure!(throttled.1.to_ascii_lowercase().contains("retry-after:"), "{}", throttled.1);
    ensure!(throttled.1.contains("TooManyRequests"), "{}", throttled.1);
    let (code, text) = curl_basic(&server, "acme/ann", PASSWORD, "/atoll/login")?;
    ensure!(code == 429, "even the right password waits out the back-off: {text}");
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(curl_basic(&server, "acme/nobody", "wrong", "/atoll/login")?.0);
    }
    ensure!(codes.contains(&429), "unknown users are throttled alike: {codes:?}");
    // Basic credentials work directly too, for clients that still send them.
    std::thread::sleep(Duration::from_secs(2));
    let (code, text) = curl_basic(&server, "acme/bob", "bobs-own-password", "/api/v1/namespaces")?;
    ensure!(code == 403 || code == 200, "bob authenticates with basic credentials: {text}");
    ensure!(text.contains("bob"), "{text}");

    // The password is in neither the store's files nor the server's log.
    let mut hits = Vec::new();
    grep_dir(&server.data(), PASSWORD.as_bytes(), &mut hits)?;
    ensure!(hits.is_empty(), "the password is stored in clear in {hits:?}");
    let log = std::fs::read_to_string(&server.log)?;
    ensure!(!log.is_empty() && !log.contains(PASSWORD), "the server log holds the password");
    let mut stored = Vec::new();
    grep_dir(&server.data(), b"$argon2id$", &mut stored)?;
    ensure!(!stored.is_empty(), "the hash is what is stored");

    // Deleting the user removes every binding naming it, and its tokens stop working.
    admin.ok(&[
        "--server",
        &acme,
        "create",
        "rolebinding",
        "shared",
        "-n",
        "team",
        "--clusterrole=view",
        "--user=ann",
        "--user=bob",
    ])?;
    let ann_token = {
        let out = Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["login", "--server", &server.url(), "--certificate-authority"])
            .arg(server.ca())
            .args(["--user", "acme/ann", "--password-file"])
            .arg(&password_file)
            .output()?;
        ensure!(out.status.success(), "atoll login: {}", String::from_utf8_lossy(&out.stderr));
        let cred: Value = serde_json::from_slice(&out.stdout)?;
        cred["status"]["token"].as_str().context("a token")?.to_string()
    };
    admin.ok(&["--server", &acme, "delete", "user", "ann", "--wait=true", "--timeout=20s"])?;
    let gone = |args: &[&str]| -> Result<bool> {
        let mut all = vec!["--server", acme.as_str()];
        all.extend_from_slice(args);
        Ok(!admin.run(&all, None)?.status.success())
    };
    eventually("ann's bindings are gone", || {
        Ok(gone(&["get", "clusterrolebinding", "atoll:user:ann"])?
            && gone(&["-n", "team", "get", "rolebinding", "atoll:namespace-owner"])?)
    })?;
    let shared = admin.ok(&["--server", &acme, "-n", "team", "get", "rolebinding", "shared", "-o", "json"])?;
    let shared: Value = serde_json::from_str(&shared)?;
    ensure!(shared["subjects"].as_array().map(Vec::len) == Some(1), "only bob is left: {shared}");
    ensure!(shared["subjects"][0]["name"] == "bob", "{shared}");
    let ann = server.with_token(&ann_token, &server.url(), 33, "ann-dead")?;
    ensure!(refused(&ann.fails(&["auth", "whoami"])?), "a deleted user's token is refused");
    // Recreating a User of the same name does not inherit the namespace.
    admin.ok_with(&["--server", &acme, "create", "-f", "-"], Some(&user_json("ann", Some(PASSWORD))))?;
    std::thread::sleep(Duration::from_secs(2));
    let ann = server.login("acme", "ann", &password_file, 33)?;
    eventually("the new ann is bound to the user role", || {
        Ok(ann.run(&["auth", "can-i", "create", "namespaces"], None)?.stdout.starts_with(b"yes"))
    })?;
    ensure!(ann.fails(&["-n", "team", "get", "configmaps"])?.contains("forbidden"), "the old namespace is not hers");

    // A deleted namespace takes its owner Role and RoleBinding along.
    admin.ok(&["--server", &acme, "delete", "namespace", "forged", "--wait=true", "--timeout=30s"])?;
    let left = admin.run(&["--server", &acme, "-n", "forged", "get", "roles,rolebindings", "-o", "name"], None)?;
    ensure!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "nothing of the namespace's RBAC is left");
    Ok(())
}

fn grep_dir(dir: &Path, needle: &[u8], hits: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            grep_dir(&path, needle, hits)?;
        } else if path.is_file() {
            let bytes = std::fs::read(&path)?;
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path);
            }
        }
    }
    Ok(())
}

#[test]
fn admin_kubeconfig_can_carry_a_user_token() -> Result<()> {
    let server = LoggedServer::start()?;
    let admin = server.admin(33)?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_json("acme")))?;
    let config = server.dir.path().join("carol.kubeconfig");
    let status = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["admin", "kubeconfig", "--tenant", "acme", "--user", "carol", "--token", "--data-dir"])
        .arg(server.data())
        .arg("--output")
        .arg(&config)
        .status()?;
    ensure!(status.success(), "atoll admin kubeconfig --token failed");
    let text = std::fs::read_to_string(&config)?;
    ensure!(text.contains("token: ey") && !text.contains("client-certificate-data"), "{text}");
    ensure!(text.contains("current-context: carol@acme"), "{text}");
    for minor in [27, 33] {
        let carol = Kubectl { bin: kubectl_binary(minor)?, kubeconfig: config.clone(), cache: tempfile::tempdir()? };
        let me = whoami(&carol)?;
        ensure!(me["status"]["userInfo"]["username"] == "carol", "{me}");
        ensure!(me["status"]["userInfo"]["extra"]["atoll.io/tenant"] == json!(["acme"]), "{me}");
    }
    // A token from another cluster's key is nobody here.
    let other = LoggedServer::start()?;
    let foreign = other.dir.path().join("foreign.kubeconfig");
    let status = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["admin", "kubeconfig", "--tenant", "system", "--user", "admin", "--group", "system:masters", "--token"])
        .arg("--data-dir")
        .arg(other.data())
        .args(["--server", &server.url(), "--output"])
        .arg(&foreign)
        .status()?;
    ensure!(status.success());
    let text = std::fs::read_to_string(&foreign)?;
    let token = text.lines().find_map(|l| l.trim().strip_prefix("token: ")).context("a token line")?;
    let k = server.with_token(token, &server.url(), 33, "foreign")?;
    let err = k.fails(&["get", "namespaces"])?;
    if !refused(&err) {
        bail!("another cluster's token was accepted: {err}");
    }
    Ok(())
}

#[test]
fn the_auth_controller_repairs_from_state_after_a_restart() -> Result<()> {
    let server = LoggedServer::start()?;
    let admin = server.admin(33)?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_json("acme")))?;
    let acme = format!("{}/tenants/acme", server.url());
    let at = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--server".to_string(), acme.clone()];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    };
    let run = |args: &[&str]| -> Result<bool> {
        let all = at(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        Ok(admin.run(&refs, None)?.status.success())
    };
    let controllers = server.controllers()?;
    admin.ok_with(
        &at(&["create", "-f", "-"]).iter().map(String::as_str).collect::<Vec<_>>(),
        Some(&user_json("ann", None)),
    )?;
    eventually("ann is bound", || run(&["get", "clusterrolebinding", "atoll:user:ann"]))?;
    drop(controllers);

    // While the controller is down: its binding is deleted by hand, a user and a namespace
    // of that user come.
    ensure!(run(&["delete", "clusterrolebinding", "atoll:user:ann"])?);
    admin.ok_with(
        &at(&["create", "-f", "-"]).iter().map(String::as_str).collect::<Vec<_>>(),
        Some(&user_json("bob", None)),
    )?;
    let token_config = server.dir.path().join("ann-token.kubeconfig");
    let status = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["admin", "kubeconfig", "--tenant", "acme", "--user", "ann", "--token", "--data-dir"])
        .arg(server.data())
        .arg("--output")
        .arg(&token_config)
        .status()?;
    ensure!(status.success());
    let ann = Kubectl { bin: kubectl_binary(33)?, kubeconfig: token_config, cache: tempfile::tempdir()? };
    admin.ok(&at(&["create", "clusterrolebinding", "ann-ns", "--clusterrole=cluster-admin", "--user=ann"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())?;
    ann.ok(&["create", "namespace", "later"])?;

    let _controllers = server.controllers()?;
    eventually("everything is repaired", || {
        Ok(run(&["get", "clusterrolebinding", "atoll:user:ann"])?
            && run(&["get", "clusterrolebinding", "atoll:user:bob"])?
            && run(&["-n", "later", "get", "rolebinding", "atoll:namespace-owner"])?
            && run(&["-n", "later", "get", "role", "atoll:namespace-owner"])?)
    })?;
    let labels =
        admin.ok(&at(&["get", "clusterrolebinding", "atoll:user:bob", "-o", "jsonpath={.metadata.labels}"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>())?;
    ensure!(labels.contains("auth-controller"), "what the controller makes is labelled: {labels}");
    Ok(())
}

#[test]
fn a_tenant_admin_lets_a_service_account_make_namespaces() -> Result<()> {
    let server = LoggedServer::start()?;
    let _controllers = server.controllers()?;
    let admin = server.admin(33)?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["alice"])))?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_json("globex")))?;
    // Alice administers acme (the tenant controller binds spec.admins); the cluster admin is
    // not involved from here on.
    let config = server.dir.path().join("alice.kubeconfig");
    let status = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["admin", "kubeconfig", "--tenant", "acme", "--user", "alice", "--data-dir"])
        .arg(server.data())
        .arg("--output")
        .arg(&config)
        .status()?;
    ensure!(status.success(), "atoll admin kubeconfig failed");
    let alice = |minor| -> Result<Kubectl> {
        Ok(Kubectl { bin: kubectl_binary(minor)?, kubeconfig: config.clone(), cache: tempfile::tempdir()? })
    };
    let a = alice(33)?;
    eventually("alice administers acme", || {
        Ok(a.run(&["auth", "can-i", "create", "clusterrolebindings"], None)?.stdout.starts_with(b"yes"))
    })?;
    a.ok(&["create", "namespace", "ops"])?;
    a.ok(&["-n", "ops", "create", "serviceaccount", "deployer"])?;
    // The least that lets the account make namespaces: get and create on them, tenant-wide.
    a.ok(&["create", "clusterrole", "ns-maker", "--verb=get,create", "--resource=namespaces"])?;
    a.ok(&["create", "clusterrolebinding", "deployer-ns", "--clusterrole=ns-maker", "--serviceaccount=ops:deployer"])?;

    for minor in [27, 33] {
        let token = alice(minor)?.ok(&["-n", "ops", "create", "token", "deployer"])?;
        let sa = server.with_token(token.trim(), &server.url(), minor, "deployer")?;
        let me = whoami(&sa)?;
        ensure!(me["status"]["userInfo"]["username"] == "system:serviceaccount:ops:deployer", "1.{minor}: {me}");
        ensure!(me["status"]["userInfo"]["extra"]["atoll.io/tenant"] == json!(["acme"]), "{me}");
        ensure!(sa.run(&["auth", "can-i", "create", "namespaces"], None)?.stdout.starts_with(b"yes"));
        ensure!(sa.run(&["auth", "can-i", "delete", "namespaces"], None)?.stdout.starts_with(b"no"));
        let list = sa.ok(&["auth", "can-i", "--list"])?;
        ensure!(list.lines().any(|l| l.starts_with("namespaces ") && l.contains("[get create]")), "{list}");

        // A namespace it creates is its own to work in (the auth-controller binds the creator).
        let ns = format!("built-{minor}");
        sa.ok(&["create", "namespace", &ns])?;
        eventually("the account may work in its namespace", || {
            Ok(sa.run(&["-n", &ns, "create", "configmap", "c1", "--from-literal=a=b"], None)?.status.success())
        })?;
        ensure!(sa.ok(&["-n", &ns, "get", "configmap", "c1", "-o", "jsonpath={.data.a}"])? == "b");
        // Nowhere else: not in another namespace of its tenant, not in another tenant.
        let err = sa.fails(&["-n", "ops", "create", "configmap", "c2", "--from-literal=a=b"])?;
        ensure!(err.contains("forbidden") || err.contains("Forbidden"), "1.{minor}: {err}");
        let elsewhere =
            server.with_token(token.trim(), &format!("{}/tenants/globex", server.url()), minor, "deployer-globex")?;
        for args in [&["get", "namespaces"][..], &["create", "namespace", "stolen"][..]] {
            let err = elsewhere.fails(args)?;
            ensure!(err.contains("forbidden") || err.contains("Forbidden"), "1.{minor} {args:?}: {err}");
        }
    }
    ensure!(
        admin
            .fails(&["--server", &format!("{}/tenants/globex", server.url()), "get", "ns", "stolen"])?
            .contains("not found")
    );
    Ok(())
}
