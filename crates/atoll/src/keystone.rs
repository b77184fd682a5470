//! Keystone on the command line: the API server's `--keystone-*` flags, and `atoll
//! credential keystone`, the kubectl exec credential plugin that turns a Keystone password
//! into a project-scoped token for kubectl.
//!
//! kubectl 1.27–1.33 no longer send a kubeconfig's `username`/`password` (checked against a
//! recording server: no `Authorization` header at all), so a stock kubectl reaches Atoll
//! with Keystone credentials through this plugin (or `--token` with a Keystone token).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use apiserver::keystone::{KeystoneClient, KeystoneConfig, TokenScope};

fn duration(s: &str) -> Result<Duration, String> {
    api::time::parse_duration(s)
}

/// The API server's Keystone settings.
#[derive(clap::Args, Clone, Debug)]
pub struct KeystoneArgs {
    /// Keystone's public identity endpoint (v3), e.g. http://127.0.0.1:5000; enables Keystone
    /// authentication (bearer Keystone tokens; basic `project/user:password`).
    #[arg(long)]
    pub keystone_url: Option<String>,
    /// The Keystone domain whose projects are Atoll tenants (project name = tenant name).
    #[arg(long, default_value = "Default")]
    pub keystone_domain: String,
    /// YAML file with the service identity that validates tokens (`username`, `password`,
    /// optional `userDomain`, `project`, `projectDomain`; no project = system scope). Without
    /// it, a token validates itself.
    #[arg(long)]
    pub keystone_service_credentials: Option<PathBuf>,
    /// PEM CA bundle for an https Keystone (default: the system's).
    #[arg(long)]
    pub keystone_ca_file: Option<PathBuf>,
    /// How long a successful Keystone authentication is remembered (e.g. 30s, 5m). A
    /// revoked token keeps working at most this long.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub keystone_cache_ttl: Duration,
    /// Create the Tenant of an authenticated Keystone project that has none (by default
    /// such a user is refused with 403 until an administrator creates the Tenant).
    #[arg(long)]
    pub keystone_auto_tenants: bool,
}

impl KeystoneArgs {
    pub fn server_options(&self) -> apiserver::http::ServerOptions {
        let keystone = self.keystone_url.as_ref().map(|url| KeystoneConfig {
            url: url.clone(),
            domain: self.keystone_domain.clone(),
            service_credentials: self.keystone_service_credentials.clone(),
            ca_file: self.keystone_ca_file.clone(),
            cache_ttl: self.keystone_cache_ttl,
            cache_entries: apiserver::keystone::CACHE_ENTRIES,
            auto_tenants: self.keystone_auto_tenants,
        });
        apiserver::http::ServerOptions { keystone, ..Default::default() }
    }
}

#[derive(clap::Subcommand)]
pub enum CredentialCommand {
    /// Print a kubectl ExecCredential holding a project-scoped Keystone token. The password
    /// comes from OS_PASSWORD, --password-file, or a prompt on the terminal.
    Keystone(KeystoneCredentialArgs),
}

#[derive(clap::Args)]
pub struct KeystoneCredentialArgs {
    /// Keystone's identity endpoint (or OS_AUTH_URL).
    #[arg(long, env = "OS_AUTH_URL")]
    url: String,
    /// The Keystone user (or OS_USERNAME).
    #[arg(long, env = "OS_USERNAME")]
    user: String,
    /// The project, i.e. the Atoll tenant (or OS_PROJECT_NAME).
    #[arg(long, env = "OS_PROJECT_NAME")]
    project: String,
    #[arg(long, env = "OS_USER_DOMAIN_NAME", default_value = "Default")]
    user_domain: String,
    #[arg(long, env = "OS_PROJECT_DOMAIN_NAME", default_value = "Default")]
    project_domain: String,
    /// PEM CA bundle for an https Keystone (or OS_CACERT).
    #[arg(long, env = "OS_CACERT")]
    ca_file: Option<PathBuf>,
    /// A file whose first line is the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
}

pub async fn run(cmd: CredentialCommand) -> Result<()> {
    let CredentialCommand::Keystone(args) = cmd;
    // kubectl says which ExecCredential version it wants and whether we may prompt.
    let exec_info: serde_json::Value = std::env::var("KUBERNETES_EXEC_INFO")
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let api_version =
        exec_info.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("client.authentication.k8s.io/v1").to_string();
    let interactive = exec_info.pointer("/spec/interactive").and_then(|v| v.as_bool()).unwrap_or(true);
    let password = password(&args, interactive)?;
    let client = KeystoneClient::new(&args.url, args.ca_file.as_deref())?;
    let scope = TokenScope::Project { name: &args.project, domain: &args.project_domain };
    let issued = client.password_token(&args.user, &args.user_domain, &password, scope).await?;
    let mut status = serde_json::json!({"token": issued.token});
    if let Some(exp) = issued.info.expires_at {
        // kubectl asks again once this passes.
        status["expirationTimestamp"] = api::time::rfc3339(exp).into();
    }
    let credential = serde_json::json!({"apiVersion": api_version, "kind": "ExecCredential", "status": status});
    let mut out = std::io::stdout().lock();
    writeln!(out, "{credential}")?;
    out.flush()?;
    Ok(())
}

fn password(args: &KeystoneCredentialArgs, interactive: bool) -> Result<String> {
    if let Ok(p) = std::env::var("OS_PASSWORD") {
        return Ok(p);
    }
    if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(text.lines().next().unwrap_or("").to_string());
    }
    if !interactive {
        bail!("no password: set OS_PASSWORD or --password-file (kubectl gave this plugin no terminal)");
    }
    eprint!("Keystone password for {}/{}: ", args.project, args.user);
    // Best effort: hide the typing when stdin is a terminal.
    let hidden = std::process::Command::new("stty")
        .arg("-echo")
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if hidden {
        let _ = std::process::Command::new("stty").arg("echo").stdin(std::process::Stdio::inherit()).status();
        eprintln!();
    }
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
