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
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let store = args.store.open().await?;
    let server = apiserver::http::Server::bind(store, &args.store.data_dir, args.listen)
        .await
        .context("starting the API server")?;
    // Tests and scripts read these lines to learn the address when listening on port 0.
    let mut out = std::io::stdout().lock();
    // Whoever started us may have stopped reading; that is no reason to stop serving.
    let _ = writeln!(out, "listening on https://{}", server.local_addr()?);
    let _ = writeln!(out, "kubeconfig: {}", server.kubeconfig.display());
    let _ = out.flush();
    drop(out);
    server.run(shutdown_signal()).await;
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
