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
        /// How long the certificate is valid: a number with s, m, h or d (30m, 12h, 7d).
        #[arg(long, default_value = "365d", value_parser = |s: &str| api::time::parse_duration(s))]
        ttl: std::time::Duration,
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
    },
}

pub fn run(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::Kubeconfig { data_dir, tenant, user, groups, ttl, server, output, component } => {
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
            let config = apiserver::pki::issue_kubeconfig(&data_dir, &server, &user, &groups, &tenant, ttl)?;
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
