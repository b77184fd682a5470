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
        AdminCommand::Kubeconfig { data_dir, tenant, user, group, server, output } => {
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
            let config = apiserver::pki::issue_kubeconfig(&data_dir, &server, &user, &group, &tenant)?;
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
