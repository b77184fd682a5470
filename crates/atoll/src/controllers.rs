//! `atoll controllers`: the cluster's controllers, as a client of the API server.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct ControllersArgs {
    /// Kubeconfig to reach the API server with (for now the administrator's, e.g.
    /// `<data-dir>/admin.kubeconfig`; least privilege comes with RBAC).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Context to use instead of the kubeconfig's current one.
    #[arg(long)]
    pub context: Option<String>,
}

pub async fn run(args: ControllersArgs) -> Result<()> {
    let config = client::Config::from_kubeconfig(&args.kubeconfig, args.context.as_deref())
        .with_context(|| format!("loading {}", args.kubeconfig.display()))?;
    let client = client::Client::new(config).context("setting up the API client")?;
    tracing::info!(server = ?client.config().server, "running the controllers");
    controllers::run_all(client, stop_signal()?).await;
    tracing::info!("controllers stopped");
    Ok(())
}

/// SIGINT or SIGTERM, whichever comes first.
pub fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
