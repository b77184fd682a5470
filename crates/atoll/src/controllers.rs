//! `atoll controllers`: the cluster's controllers, as a client of the API server.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct ControllersArgs {
    /// Kubeconfig to reach the API server with: the controllers' own identity (`atoll admin
    /// kubeconfig --component controllers`, or `<data-dir>/controllers.kubeconfig` that `atoll up` writes).
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
    controllers::run_all(client, crate::stop_signal()?).await;
    tracing::info!("controllers stopped");
    Ok(())
}
