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
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
        /// The group the user belongs to.
        #[arg(long, default_value = "system:authenticated")]
        group: String,
        /// Server URL; by default the one in the data directory's admin.kubeconfig.
        #[arg(long)]
        server: Option<String>,
        /// Write the kubeconfig here (mode 0600) instead of printing it.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Present a signed user token (valid 24 hours) instead of a client certificate.
        #[arg(long)]
        token: bool,
    },
}

/// How long a token from `admin kubeconfig --token` lives.
const TOKEN_TTL: i64 = 24 * 3600;

pub fn run(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::Kubeconfig { data_dir, tenant, user, group, server, output, token } => {
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
            let config = if token {
                apiserver::authn::issue_token_kubeconfig(&data_dir, &server, &user, &group, &tenant, TOKEN_TTL)?
            } else {
                apiserver::pki::issue_kubeconfig(&data_dir, &server, &user, &group, &tenant)?
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
