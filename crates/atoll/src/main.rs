//! `atoll`: the one binary. Each role of the cluster is a subcommand.

mod admin;
mod agent;
mod api_sli;
mod bench;
mod bench_api;
mod bench_authz;
mod bench_container;
mod bench_pods;
mod bench_scale;
mod bench_sched;
mod bench_writes;
mod controllers;
mod debug;
mod image;
mod keystone;
mod login;
mod sched;
mod server;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use store::Store;

#[derive(Parser)]
#[command(name = "atoll", version, about = "A multi-tenant cluster manager that speaks the Kubernetes API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster on this machine: API server, controllers and node agent in one process.
    Up(up::UpArgs),
    /// Run the API server over a store.
    Server(server::ServerArgs),
    /// Run the controllers against an API server.
    Controllers(controllers::ControllersArgs),
    /// Run the node agent: register this machine as a Node and run the pods bound to it.
    Agent(agent::AgentArgs),
    /// Run the scheduler against an API server.
    Scheduler(sched::SchedulerArgs),
    /// A kubectl credential plugin: trade a User's password for a short-lived token.
    Login(login::LoginArgs),
    /// Operator tools (certificates, kubeconfigs).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// kubectl credential plugins (`atoll credential keystone`).
    #[command(subcommand)]
    Credential(keystone::CredentialCommand),
    /// Benchmarks (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The node's image store: import, list, build the local busybox image.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Tools for tests and debugging.
    #[command(subcommand, hide = true)]
    Debug(debug::DebugCommand),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// The embedded store in the data directory (default).
    Embedded,
    /// An external etcd cluster (`--etcd-endpoints`).
    Etcd,
}

/// Where cluster state lives; shared by every subcommand that opens a store.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// Directory for the embedded store and generated files.
    #[arg(long, default_value = "/var/lib/atoll")]
    pub data_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    /// Comma-separated etcd client URLs, for `--store etcd`.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
}

impl StoreArgs {
    pub async fn open(&self) -> Result<Arc<dyn Store>> {
        Ok(match self.store {
            StoreKind::Embedded => {
                let dir = self.data_dir.join("store");
                let store = store::embedded::EmbeddedStore::open(&dir)
                    .with_context(|| format!("opening the embedded store in {}", dir.display()))?;
                Arc::new(store)
            }
            StoreKind::Etcd => {
                anyhow::ensure!(!self.etcd_endpoints.is_empty(), "--store etcd needs --etcd-endpoints");
                let store = store::etcd::EtcdStore::connect(&self.etcd_endpoints)
                    .await
                    .with_context(|| format!("connecting to etcd at {}", self.etcd_endpoints.join(",")))?;
                Arc::new(store)
            }
        })
    }
}

/// SIGINT or SIGTERM, whichever comes first: how every long-running role is stopped.
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

/// jemalloc rather than glibc's malloc for every role: the control plane allocates and frees
/// small objects from many threads at once (JSON trees, buffers), where glibc's arenas spent
/// ~30% of its CPU (`_int_malloc`, `unlink_chunk`, `malloc_consolidate`); measured in
/// BENCHMARKS.md ("the allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // `atoll shim ...` is the container supervisor the agent starts (agent::shim): it lives
    // as long as its container, so it skips the async runtime and logging set-up.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "shim") {
        let code = ::agent::shim::main(args);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ATOLL_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("atoll: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Server(args) => server::run(args).await,
            Command::Controllers(args) => controllers::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Scheduler(args) => sched::run(args).await,
            Command::Admin(cmd) => admin::run(cmd),
            Command::Credential(cmd) => keystone::run(cmd).await,
            Command::Login(args) => login::run(args).await,
            Command::Bench(cmd) => bench::run(cmd).await,
            Command::Image(cmd) => image::run(cmd).await,
            Command::Debug(cmd) => debug::run(cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("atoll: {e:#}");
            ExitCode::FAILURE
        }
    }
}
