//! `atoll server`: the API server over a store, on HTTPS with the cluster's certificates.

use std::io::Write;
use std::net::SocketAddr;

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
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let store = args.store.open().await?;
    let server =
        apiserver::http::Server::bind_with(store, &args.store.data_dir, args.listen, args.keystone.server_options())
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
