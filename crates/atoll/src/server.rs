//! `atoll server`: the API server over a store, on HTTPS with the cluster's certificates.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::StoreArgs;

#[derive(clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub keystone: crate::keystone::KeystoneArgs,
    #[command(flatten)]
    pub compaction: CompactionArgs,
}

/// How often the API server compacts the store (shared with `atoll up`).
#[derive(clap::Args, Clone, Debug)]
pub struct CompactionArgs {
    /// Compact the store this often (`5m`, `30s`, ...), to the revision seen one interval
    /// earlier; watches and lists from older resource versions then get 410 Gone. `0`
    /// never compacts.
    #[arg(long, default_value = "5m", value_parser = interval)]
    pub compaction_interval: Duration,
}

impl CompactionArgs {
    /// The server options with these settings.
    pub fn apply(&self, mut options: apiserver::http::ServerOptions) -> apiserver::http::ServerOptions {
        options.compaction_interval = Some(self.compaction_interval).filter(|i| !i.is_zero());
        options
    }
}

fn interval(s: &str) -> Result<Duration, String> {
    // Kubernetes spells "never" as 0 (no unit), which the duration syntax has no room for.
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    api::time::parse_duration(s)
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let store = args.store.open().await?;
    let options = args.compaction.apply(args.keystone.server_options());
    let server = apiserver::http::Server::bind_with(store, &args.store.data_dir, args.listen, options)
        .await
        .context("starting the API server")?;
    // Tests and scripts read these lines to learn the address when listening on port 0.
    let mut out = std::io::stdout().lock();
    // Whoever started us may have stopped reading; that is no reason to stop serving.
    let _ = writeln!(out, "listening on https://{}", server.local_addr()?);
    let _ = writeln!(out, "kubeconfig: {}", server.kubeconfig.display());
    let _ = out.flush();
    drop(out);
    server.run(crate::stop_signal()?).await;
    tracing::info!("shut down");
    Ok(())
}
