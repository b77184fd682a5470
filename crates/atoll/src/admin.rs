//! `atoll admin`: tools for the cluster's operator, run on the control-plane machine.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Issue a client certificate for a user of a tenant and print a kubeconfig for it.
    Kubeconfig {
        /// The server's data directory (holds the cluster CA).
        #[arg(long, default_value = "/var/lib/atoll")]
        data_dir: PathBuf,
        #[arg(long, required_unless_present = "component")]
        tenant: Option<String>,
        #[arg(long, required_unless_present = "component")]
        user: Option<String>,
        /// The user's groups, comma-separated (written into the certificate; every
        /// authenticated user is in `system:authenticated` anyway).
        #[arg(long, alias = "group", value_delimiter = ',', conflicts_with = "component")]
        groups: Vec<String>,
        /// How long the credential is valid: a number with s, m, h or d (30m, 12h, 7d);
        /// by default 365d for a certificate, 24h for a token.
        #[arg(long, value_parser = |s: &str| api::time::parse_duration(s))]
        ttl: Option<std::time::Duration>,
        /// Issue the identity of one of Atoll's components instead of a user's:
        /// `controllers`, `scheduler` or `node:<node name>` (system tenant, least privilege).
        #[arg(long, conflicts_with_all = ["tenant", "user"])]
        component: Option<String>,
        /// Server URL; by default the one in the data directory's admin.kubeconfig.
        #[arg(long)]
        server: Option<String>,
        /// Write the kubeconfig here (mode 0600) instead of printing it.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Present a signed user token (valid 24 hours unless `--ttl`) instead of a client
        /// certificate.
        #[arg(long, conflicts_with = "component")]
        token: bool,
    },
    /// Issue a node agent's serving certificate (for `atoll agent --tls-cert-file`) and
    /// copy the cluster CA beside it (for `--client-ca-file`).
    NodeCert {
        #[arg(long, default_value = "/var/lib/atoll")]
        data_dir: PathBuf,
        /// The node's name.
        #[arg(long)]
        node: String,
        /// Names and addresses the API server reaches the node by (repeatable).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Folder to write `node.crt`, `node.key` (0600) and `ca.crt` into.
        #[arg(long)]
        out_dir: PathBuf,
    },
}

/// How long a token from `admin kubeconfig --token` lives unless `--ttl` says otherwise.
const TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// How long a certificate from `admin kubeconfig` lives unless `--ttl` says otherwise.
const CERT_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

pub fn run(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::NodeCert { data_dir, node, hosts, out_dir } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let issued = apiserver::pki::issue_node_serving(&data_dir, &node, &hosts)?;
            std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
            for (name, text, mode) in [
                ("node.crt", &issued.cert, 0o644),
                ("node.key", &issued.key, 0o600),
                ("ca.crt", &issued.ca_cert, 0o644),
            ] {
                let path = out_dir.join(name);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .open(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
                f.write_all(text.as_bytes())?;
            }
            Ok(())
        }
        AdminCommand::Kubeconfig { data_dir, tenant, user, groups, ttl, server, output, component, token } => {
            let server = match server {
                Some(s) => s,
                None => {
                    let admin = data_dir.join("admin.kubeconfig");
                    let text = std::fs::read_to_string(&admin)
                        .with_context(|| format!("reading {} (or pass --server)", admin.display()))?;
                    text.lines()
                        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_string))
                        .context("no server in admin.kubeconfig; pass --server")?
                }
            };
            let (tenant, user, groups) = match component {
                Some(c) => {
                    let (user, group) = apiserver::pki::Component::parse(&c)?.identity();
                    (api::request::SYSTEM_TENANT.to_string(), user, vec![group])
                }
                // clap makes both present without --component.
                None => (tenant.unwrap_or_default(), user.unwrap_or_default(), groups),
            };
            let config = if token {
                let ttl = ttl.unwrap_or(TOKEN_TTL).as_secs().try_into().context("--ttl is too long")?;
                apiserver::authn::issue_token_kubeconfig(&data_dir, &server, &user, &groups, &tenant, ttl)?
            } else {
                apiserver::pki::issue_kubeconfig(&data_dir, &server, &user, &groups, &tenant, ttl.unwrap_or(CERT_TTL))?
            };
            match output {
                Some(path) => {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("writing {}", path.display()))?;
                    f.write_all(config.as_bytes())?;
                }
                None => print!("{config}"),
            }
            Ok(())
        }
    }
}
