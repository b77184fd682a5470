//! `atoll up`: a whole cluster on this machine in one process: the API server on the
//! embedded store (or etcd) and the controllers, which reach it over HTTPS like any
//! client. The scheduler and the node agent join it as they land.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, Result};

use crate::StoreArgs;

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
}

pub async fn run(args: UpArgs) -> Result<()> {
    let store = args.store.open().await?;
    let server = apiserver::http::Server::bind(store, &args.store.data_dir, args.listen)
        .await
        .context("starting the API server")?;
    let addr = server.local_addr()?;
    let kubeconfig = server.kubeconfig.clone();
    let config = client::Config::from_kubeconfig(&kubeconfig, None)
        .with_context(|| format!("loading {}", kubeconfig.display()))?;
    let client = client::Client::new(config).context("setting up the controllers' API client")?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let when_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server_task = tokio::spawn(server.run(when_stopped(stopped.clone())));
    let controllers_task = tokio::spawn(controllers::run_all(client, when_stopped(stopped)));

    let mut out = std::io::stdout().lock();
    // Tests and scripts read the first line to learn the address when listening on port 0.
    let _ = writeln!(out, "listening on https://{addr}");
    let _ = writeln!(out, "kubeconfig: {}", kubeconfig.display());
    let _ = writeln!(out, "Atoll is up. Next:\n  export KUBECONFIG={}\n  kubectl get namespaces", kubeconfig.display());
    let _ = out.flush();
    drop(out);

    crate::stop_signal()?.await;
    tracing::info!("stopping");
    let _ = stop.send(true);
    // The controllers finish what they are doing while the server still answers them.
    let _ = controllers_task.await;
    let _ = server_task.await;
    tracing::info!("stopped");
    Ok(())
}
