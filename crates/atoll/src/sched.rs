//! `atoll scheduler`: the scheduler, as a client of the API server.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct SchedulerArgs {
    /// Kubeconfig to reach the API server with: the scheduler's own identity (`atoll admin
    /// kubeconfig --component scheduler`, or `<data-dir>/scheduler.kubeconfig` that `atoll up` writes).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Context to use instead of the kubeconfig's current one.
    #[arg(long)]
    pub context: Option<String>,
    /// The scheduler's name: it places pods whose `spec.schedulerName` is this.
    #[arg(long, default_value = "default-scheduler")]
    pub name: String,
    /// Binding requests in flight at once.
    #[arg(long, default_value_t = 256)]
    pub bind_concurrency: usize,
}

/// The product the scheduler introduces itself as (its writes' field manager).
pub const SCHEDULER_AGENT: &str = "atoll-scheduler";

pub async fn run(args: SchedulerArgs) -> Result<()> {
    let config = client::Config::from_kubeconfig(&args.kubeconfig, args.context.as_deref())
        .with_context(|| format!("loading {}", args.kubeconfig.display()))?;
    let client = client::Client::new(config.named(SCHEDULER_AGENT)).context("setting up the API client")?;
    tracing::info!(server = ?client.config().server, name = %args.name, "running the scheduler");
    let cfg = scheduler::Config { name: args.name, bind_concurrency: args.bind_concurrency, ..Default::default() };
    scheduler::run(client, cfg, crate::stop_signal()?).await;
    Ok(())
}
