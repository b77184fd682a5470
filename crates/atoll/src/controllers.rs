//! `atoll controllers`: the cluster's controllers, as a client of the API server. The one
//! place controllers are registered (`run_all`), for this subcommand and `atoll up`.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

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
    #[command(flatten)]
    pub options: ControllerOptions,
}

/// Settings of the controllers, shared with `atoll up`.
#[derive(clap::Args, Clone, Debug)]
pub struct ControllerOptions {
    /// How long a node may go without renewing its Lease before it is marked Unknown and
    /// tainted unreachable (seconds, `40` or `40s`).
    #[arg(long, default_value = "40s", value_parser = parse_seconds)]
    pub node_monitor_grace_period: Duration,
    /// Unhealthy nodes given the NoExecute taint (which evicts their pods) per second, in a
    /// zone mostly healthy (Kubernetes' `--node-eviction-rate`).
    #[arg(long, default_value_t = controllers::nodelifecycle::zones::DEFAULT_EVICTION_RATE)]
    pub node_eviction_rate: f64,
    /// The same in a large zone where at least `--unhealthy-zone-threshold` of the nodes are not Ready.
    #[arg(long, default_value_t = controllers::nodelifecycle::zones::DEFAULT_SECONDARY_EVICTION_RATE)]
    pub secondary_node_eviction_rate: f64,
    /// Share of not-Ready nodes (with more than 2) that makes a zone partially disrupted.
    #[arg(long, default_value_t = controllers::nodelifecycle::zones::DEFAULT_UNHEALTHY_ZONE_THRESHOLD)]
    pub unhealthy_zone_threshold: f64,
    /// Nodes a zone needs for the secondary rate; a smaller partially disrupted zone taints none.
    #[arg(long, default_value_t = controllers::nodelifecycle::zones::DEFAULT_LARGE_CLUSTER_SIZE)]
    pub large_cluster_size_threshold: usize,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let digits = s.strip_suffix('s').unwrap_or(s);
    digits.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{s:?} is not a number of seconds"))
}

/// Runs every controller until `shutdown` resolves.
pub async fn run_all(client: client::Client, options: ControllerOptions, shutdown: impl Future<Output = ()>) {
    let rates = controllers::nodelifecycle::zones::Rates {
        eviction: options.node_eviction_rate,
        secondary: options.secondary_node_eviction_rate,
        unhealthy_threshold: options.unhealthy_zone_threshold,
        large_cluster: options.large_cluster_size_threshold,
    };
    let lifecycle = controllers::nodelifecycle::Config { grace: options.node_monitor_grace_period, rates };
    controllers::run_all(client, lifecycle, shutdown).await;
}

/// The product the controllers introduce themselves as (their writes' field manager).
pub const CONTROLLERS_AGENT: &str = "atoll-controllers";

pub async fn run(args: ControllersArgs) -> Result<()> {
    let config = client::Config::from_kubeconfig(&args.kubeconfig, args.context.as_deref())
        .with_context(|| format!("loading {}", args.kubeconfig.display()))?;
    let client = client::Client::new(config.named(CONTROLLERS_AGENT)).context("setting up the API client")?;
    tracing::info!(server = ?client.config().server, "running the controllers");
    run_all(client, args.options, crate::stop_signal()?).await;
    tracing::info!("controllers stopped");
    Ok(())
}
