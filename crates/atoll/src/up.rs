//! `atoll up`: a whole cluster on this machine in one process: the API server on the
//! embedded store (or etcd); the controllers and the scheduler, which reach it over HTTPS
//! like any client; and the node agent for this machine (node name = hostname unless
//! told, data in `<data-dir>/agent`), which stops its containers when `up` stops and makes
//! them again on the next start. Each component has its own identity (kubeconfigs
//! `controllers.kubeconfig`, `scheduler.kubeconfig`, `node-<node>.kubeconfig` in the data
//! directory, issued at every start from its CA).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::StoreArgs;

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub keystone: crate::keystone::KeystoneArgs,
    #[command(flatten)]
    pub compaction: crate::server::CompactionArgs,
    /// The Node's name (default: this machine's hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// OCI runtime for the node agent: crun, runc or a path.
    #[arg(long, default_value = "crun")]
    pub runtime: std::path::PathBuf,
    /// Run no node agent (API server and controllers only).
    #[arg(long)]
    pub no_agent: bool,
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
    /// Where the node agent serves logs and exec to the API server (port 0: any free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub agent_listen: SocketAddr,
    /// Also run this many simulated nodes (`sim-0`, ...; labelled `atoll.io/simulated=true`,
    /// they run nothing) beside the real one.
    #[arg(long, default_value_t = 0)]
    pub simulated_nodes: usize,
    #[command(flatten)]
    pub controllers: crate::controllers::ControllerOptions,
    #[command(flatten)]
    pub registry: crate::image::RegistryArgs,
    /// The VM pods' accelerator: tcg (emulation, works everywhere), kvm, or auto (KVM
    /// when a probe guest boots under it; some hosts have /dev/kvm whose guests hang).
    #[arg(long, default_value = "tcg")]
    pub vm_accel: agent::runtime::vm::Accel,
}

pub async fn run(args: UpArgs) -> Result<()> {
    let store = args.store.open().await?;
    let options = args.compaction.apply(args.keystone.server_options());
    let server = apiserver::http::Server::bind_with(store, &args.store.data_dir, args.listen, options)
        .await
        .context("starting the API server")?;
    let addr = server.local_addr()?;
    let kubeconfig = server.kubeconfig.clone();
    let node_name = args.node_name.clone().unwrap_or_else(crate::agent::hostname);
    // Each component reaches the server with its own least-privileged identity, never the
    // administrator's; being in this process, it hands its requests to the server in memory
    // (authenticated from that identity's certificate as over a connection).
    let data_dir = &args.store.data_dir;
    let client_for = |component: apiserver::pki::Component, product: &str| -> Result<client::Client> {
        let path = apiserver::pki::write_component_kubeconfig(data_dir, &server.url, &component)
            .with_context(|| format!("issuing the {component:?} identity"))?;
        let config = client::Config::from_kubeconfig(&path, None)
            .with_context(|| format!("loading {}", path.display()))?
            .named(product);
        let cert =
            config.identity.as_ref().map(|(cert, _)| cert.clone()).context("the component has no certificate")?;
        let handler = server.in_process(&cert).with_context(|| format!("the {component:?} identity"))?;
        client::Client::in_process(config, Arc::new(handler))
            .with_context(|| format!("setting up the {component:?} API client"))
    };
    let controllers_client = client_for(apiserver::pki::Component::Controllers, crate::controllers::CONTROLLERS_AGENT)?;
    let scheduler_client = client_for(apiserver::pki::Component::Scheduler, crate::sched::SCHEDULER_AGENT)?;
    let agent_client = client_for(apiserver::pki::Component::Node(node_name.clone()), crate::agent::AGENT)?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let when_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server_task = tokio::spawn(server.run(when_stopped(stopped.clone())));
    let controllers_task = tokio::spawn(crate::controllers::run_all(
        controllers_client,
        args.controllers.clone(),
        when_stopped(stopped.clone()),
    ));
    let simulated_task = if args.simulated_nodes > 0 {
        // A connection of their own: thousands of nodes' renewals must not queue behind the
        // controllers' requests. Simulated nodes are a test tool acting for many nodes at
        // once, so they use the administrator's identity (node restriction would confine one
        // identity to one node).
        let config = client::Config::from_kubeconfig(&kubeconfig, None)?.named(crate::agent::SIMULATED_AGENT);
        let sims = client::Client::new(config).context("setting up the simulated nodes' API client")?;
        let cfg = agent::simulated::SimConfig::new(args.simulated_nodes, "sim");
        Some(tokio::spawn(agent::simulated::run(sims, cfg, when_stopped(stopped.clone()))))
    } else {
        None
    };
    let scheduler_task =
        tokio::spawn(scheduler::run(scheduler_client, scheduler::Config::default(), when_stopped(stopped.clone())));
    let agent_task = if args.no_agent {
        None
    } else {
        let mut cfg = agent::daemon::AgentConfig::new(
            &node_name,
            args.store.data_dir.join("agent"),
            crate::agent::shim_command()?,
        );
        cfg.runtime = args.runtime.clone();
        cfg.network = crate::agent::network(args.loopback_only, &args.bridge, &args.pod_cidr);
        cfg.registry = args.registry.config();
        cfg.vm_accel = args.vm_accel;
        cfg.network_pool = args.network_pool;
        // The cluster goes away with this process: its containers too (made again next time).
        cfg.stop_pods_on_exit = true;
        cfg.serving = Some(crate::agent::serving_from_data_dir(&args.store.data_dir, &node_name, args.agent_listen)?);
        Some(tokio::spawn(agent::daemon::run(agent_client, cfg, when_stopped(stopped))))
    };

    let mut out = std::io::stdout().lock();
    // Tests and scripts read the first line to learn the address when listening on port 0.
    let _ = writeln!(out, "listening on https://{addr}");
    let _ = writeln!(out, "kubeconfig: {}", kubeconfig.display());
    let _ = writeln!(out, "Atoll is up. Next:\n  export KUBECONFIG={}\n  kubectl get namespaces", kubeconfig.display());
    let _ = out.flush();
    drop(out);

    let signal = crate::stop_signal()?;
    let mut agent_failed = None;
    match agent_task {
        Some(mut task) => {
            tokio::select! {
                _ = signal => {
                    tracing::info!("stopping");
                    let _ = stop.send(true);
                    agent_failed = task.await.ok().and_then(Result::err);
                }
                // The agent ends early only by failing: say so and stop everything.
                result = &mut task => {
                    let _ = stop.send(true);
                    agent_failed = result.ok().and_then(Result::err);
                }
            }
        }
        None => {
            signal.await;
            tracing::info!("stopping");
            let _ = stop.send(true);
        }
    }
    // The controllers and the scheduler finish what they are doing while the server still
    // answers them.
    let _ = controllers_task.await;
    let _ = scheduler_task.await;
    if let Some(task) = simulated_task
        && let Ok(Err(e)) = task.await
    {
        tracing::warn!(error = %e, "simulated nodes failed");
    }
    let _ = server_task.await;
    tracing::info!("stopped");
    match agent_failed {
        Some(e) => Err(e).context("the node agent failed"),
        None => Ok(()),
    }
}
