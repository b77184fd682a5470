//! `atoll agent`: the node agent, as a client of the API server. Wiring only; the agent
//! lives in `agent::daemon`.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Kubeconfig to reach the API server with: the node's own identity (`atoll admin
    /// kubeconfig --component node:<node>`); node restriction keeps it to this node's objects.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Context to use instead of the kubeconfig's current one.
    #[arg(long)]
    pub context: Option<String>,
    /// The Node's name (default: this machine's hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The agent's folder: images/, runtime/, logs/ (not used by simulated nodes).
    #[arg(long, required_unless_present = "simulated")]
    pub data_dir: Option<PathBuf>,
    /// OCI runtime: crun, runc or a path.
    #[arg(long, default_value = "crun")]
    pub runtime: PathBuf,
    /// Stop every container when the agent stops (by default they keep running and a
    /// restarted agent adopts them).
    #[arg(long)]
    pub stop_pods_on_exit: bool,
    /// The node bridge pods attach to.
    #[arg(long, default_value = "atoll0")]
    pub bridge: String,
    /// The node's pod CIDR: the bridge takes its first address, pods the rest.
    #[arg(long, default_value = "10.88.0.0/16")]
    pub pod_cidr: String,
    /// Pods get a network namespace with loopback only (no bridge, no pod IP).
    #[arg(long)]
    pub loopback_only: bool,
    /// Pod networks (namespace, veth, address) kept made ahead of need, so that a burst of
    /// pods starting sets up none itself (0: none).
    #[arg(long, default_value_t = agent::daemon::DEFAULT_NETWORK_POOL)]
    pub network_pool: usize,
    /// Where to serve logs, exec and attach to the API server.
    #[arg(long, default_value = "0.0.0.0:10250")]
    pub listen: std::net::SocketAddr,
    /// The port's serving certificate (PEM, from the cluster CA: `atoll admin node-cert`);
    /// without it the node serves no logs or exec.
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// The CA the API server's client certificate must chain to (the cluster CA).
    #[arg(long, requires = "tls_cert_file")]
    pub client_ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub sim: SimArgs,
    #[command(flatten)]
    pub registry: crate::image::RegistryArgs,
    /// The VM pods' accelerator: tcg (emulation, works everywhere), kvm, or auto (KVM
    /// when a probe guest boots under it; some hosts have /dev/kvm whose guests hang).
    #[arg(long, default_value = "tcg")]
    pub vm_accel: agent::runtime::vm::Accel,
}

/// Simulated nodes (scale tests and benchmarks; they run nothing).
#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// Run this many simulated nodes in this process instead of a real node agent.
    #[arg(long, value_name = "N")]
    pub simulated: Option<usize>,
    /// Simulated nodes are named `<prefix>-<i>`.
    #[arg(long, default_value = "sim")]
    pub name_prefix: String,
    /// Seconds between a simulated node's Lease renewals.
    #[arg(long, default_value_t = 10)]
    pub sim_lease_renew_seconds: u64,
    /// Seconds between a simulated node's status rewrites.
    #[arg(long, default_value_t = 60)]
    pub sim_status_seconds: u64,
}

impl SimArgs {
    pub fn config(&self, count: usize) -> agent::simulated::SimConfig {
        let mut cfg = agent::simulated::SimConfig::new(count, &self.name_prefix);
        cfg.lease_renew = std::time::Duration::from_secs(self.sim_lease_renew_seconds.max(1));
        cfg.status_every = std::time::Duration::from_secs(self.sim_status_seconds.max(1));
        cfg
    }
}

/// The agent's port configuration for a node of the cluster whose CA is in `data_dir`
/// (`atoll up`): a serving certificate for the listen address, issued afresh.
pub fn serving_from_data_dir(
    data_dir: &std::path::Path,
    node: &str,
    listen: std::net::SocketAddr,
) -> Result<agent::server::ServingConfig> {
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string(), node.to_string()];
    if !listen.ip().is_unspecified() {
        hosts.push(listen.ip().to_string());
    }
    let issued =
        apiserver::pki::issue_node_serving(data_dir, node, &hosts).context("issuing the node's certificate")?;
    Ok(agent::server::ServingConfig {
        listen,
        cert_pem: issued.cert,
        key_pem: issued.key,
        client_ca_pem: issued.ca_cert,
    })
}

/// The supervisor command: the `atoll-shim` built beside this binary (started once per
/// container; much cheaper to execute than all of `atoll`), else this very binary's `shim`
/// subcommand (the same code), for an `atoll` copied somewhere alone.
pub fn shim_command() -> Result<Vec<OsString>> {
    let exe = std::env::current_exe().context("finding our own binary")?;
    let beside = exe.with_file_name("atoll-shim");
    if beside.is_file() {
        return Ok(vec![beside.into()]);
    }
    Ok(vec![exe.into(), "shim".into()])
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn network(loopback_only: bool, bridge: &str, cidr: &str) -> agent::daemon::NetworkConfig {
    if loopback_only {
        agent::daemon::NetworkConfig::LoopbackOnly
    } else {
        agent::daemon::NetworkConfig::Bridge { name: bridge.into(), cidr: cidr.into() }
    }
}

/// The products node agents introduce themselves as (their writes' field manager).
pub const AGENT: &str = "atoll-agent";
pub const SIMULATED_AGENT: &str = "atoll-simulated-nodes";

pub async fn run(args: AgentArgs) -> Result<()> {
    let config = client::Config::from_kubeconfig(&args.kubeconfig, args.context.as_deref())
        .with_context(|| format!("loading {}", args.kubeconfig.display()))?;
    let product = if args.sim.simulated.is_some() { SIMULATED_AGENT } else { AGENT };
    let client = client::Client::new(config.named(product)).context("setting up the API client")?;
    if let Some(count) = args.sim.simulated {
        tracing::info!(count, prefix = %args.sim.name_prefix, "running simulated nodes");
        agent::simulated::run(client, args.sim.config(count), crate::stop_signal()?)
            .await
            .context("simulated nodes")?;
        tracing::info!("simulated nodes stopped");
        return Ok(());
    }
    let data_dir = args.data_dir.context("--data-dir is required")?;
    let name = args.node_name.unwrap_or_else(hostname);
    let mut cfg = agent::daemon::AgentConfig::new(&name, data_dir, shim_command()?);
    cfg.runtime = args.runtime;
    cfg.stop_pods_on_exit = args.stop_pods_on_exit;
    cfg.network = network(args.loopback_only, &args.bridge, &args.pod_cidr);
    cfg.network_pool = args.network_pool;
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_private_key_file) {
        let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        let ca = args.client_ca_file.as_ref().context("--client-ca-file is needed with --tls-cert-file")?;
        cfg.serving = Some(agent::server::ServingConfig {
            listen: args.listen,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: read(ca)?,
        });
    } else {
        tracing::warn!("no --tls-cert-file: this node serves no logs, exec or attach");
    }
    cfg.registry = args.registry.config();
    cfg.vm_accel = args.vm_accel;
    tracing::info!(node = %name, server = ?client.config().server, "running the node agent");
    agent::daemon::run(client, cfg, crate::stop_signal()?).await.context("node agent")?;
    tracing::info!("node agent stopped");
    Ok(())
}
