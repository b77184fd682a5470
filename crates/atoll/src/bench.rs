//! `atoll bench store`: durable put throughput and latency, and watch fan-out, for the
//! embedded store and a real etcd started on loopback, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use store::{Store, WatchMessage, WatchOptions};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Store benchmark: embedded vs etcd.
    Store(StoreBenchArgs),
    /// API benchmark: creates, LIST and watch over HTTPS against a server process.
    Api(crate::bench_api::ApiBenchArgs),
    /// Container start latency through the OCI runtime (root, crun or runc, busybox-static).
    Container(crate::bench_container::ContainerBenchArgs),
    /// Authorization benchmark: the RBAC index's per-request cost against a store read.
    Authz(crate::bench_authz::AuthzBenchArgs),
    /// Scheduler benchmark: the decision core alone, and the whole loop against an
    /// in-process API server.
    Scheduler(crate::bench_sched::SchedulerBenchArgs),
    /// Pod startup latency (create -> Running) for pods created at once, on the real local
    /// node of a cluster it starts (or `--kubeconfig`), or on simulated nodes.
    Pods(crate::bench_pods::PodsBenchArgs),
    /// Scale: 5,000 simulated nodes and 150,000 pods (Deployments and bare pods) against the
    /// control plane in its own process, on the embedded store or etcd.
    Scale(crate::bench_scale::ScaleBenchArgs),
    /// The control plane's CPU per write of a pod's three (create, binding, status) through
    /// the in-process handler, the embedded store in a temporary directory.
    Writes(crate::bench_writes::WritesBenchArgs),
    /// Authentication's costs: one argon2id password check, against one signed-token check.
    Password {
        /// Checks of each kind to time.
        #[arg(long, default_value_t = 30)]
        iterations: usize,
    },
}

#[derive(clap::Args)]
pub struct StoreBenchArgs {
    /// Seconds per put measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrency levels for puts.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    concurrency: Vec<usize>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Watchers for the fan-out measurement.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Events the single writer produces in the fan-out measurement.
    #[arg(long, default_value_t = 500)]
    fanout_events: usize,
    /// Directory for the stores' data (default: a temporary directory on the same disk).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Skip etcd (no ratio then).
    #[arg(long)]
    no_etcd: bool,
}

pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Store(args) => store_bench(args).await,
        BenchCommand::Api(args) => crate::bench_api::run(args).await,
        BenchCommand::Container(args) => tokio::task::spawn_blocking(move || crate::bench_container::run(args)).await?,
        BenchCommand::Authz(args) => crate::bench_authz::run(args).await,
        BenchCommand::Scheduler(args) => crate::bench_sched::run(args).await,
        BenchCommand::Pods(args) => crate::bench_pods::run(args).await,
        BenchCommand::Scale(args) => crate::bench_scale::run(args).await,
        BenchCommand::Writes(args) => crate::bench_writes::run(args).await,
        BenchCommand::Password { iterations } => {
            tokio::task::spawn_blocking(move || password_bench(iterations)).await?
        }
    }
}

/// Throughput and latency of a closed-loop run.
pub(crate) struct Rate {
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// Waits for closed-loop tasks (each returns the latency of every operation it did) and
/// summarises them over the time since `started`.
pub(crate) async fn summarize(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>>>>,
    started: Instant,
) -> Result<Rate> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(Rate { per_sec: all.len() as f64 / elapsed, p50: percentile(&all, 0.5), p99: percentile(&all, 0.99) })
}

struct FanoutResult {
    delivered_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// Collects every watcher's latencies (sorted) and how many watchers reported.
pub(crate) async fn gather(
    done: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<Duration>>,
) -> Result<(Vec<Duration>, usize)> {
    let mut all = Vec::new();
    let mut finished = 0;
    while let Some(lat) =
        tokio::time::timeout(Duration::from_secs(120), done.recv()).await.context("watchers stalled")?
    {
        finished += 1;
        all.extend(lat);
    }
    all.sort_unstable();
    Ok((all, finished))
}

/// A real etcd on loopback and a store client for it, unless `skip`.
pub(crate) async fn start_etcd(skip: bool) -> Result<Option<(store::etcd_process::EtcdProcess, Arc<dyn Store>)>> {
    if skip {
        return Ok(None);
    }
    let process = store::etcd_process::EtcdProcess::start().context("starting etcd (apt-get install etcd-server)")?;
    let client: Arc<dyn Store> = Arc::new(store::etcd::EtcdStore::connect(&[process.endpoint()]).await?);
    Ok(Some((process, client)))
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Puts from `concurrency` tasks for `secs` seconds, each waiting for its acknowledgement.
pub(crate) async fn bench_puts(
    store: Arc<dyn Store>,
    prefix: &str,
    concurrency: usize,
    secs: f64,
    value: Bytes,
) -> Result<Rate> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (store, value, prefix) = (store.clone(), value.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                // Keys cycle over a fixed set per task, so the key count stays bounded.
                let key = Bytes::from(format!("{prefix}/{t}/{}", i % 1000));
                let t0 = Instant::now();
                store.put(key, value.clone()).await?;
                lat.push(t0.elapsed());
                i += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    summarize(tasks, started).await
}

async fn bench_fanout(store: Arc<dyn Store>, prefix: &str, watchers: usize, events: usize) -> Result<FanoutResult> {
    let epoch = Instant::now();
    let start_rev = store.current_revision().await?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Duration>>();
    let mut streams = Vec::new();
    for _ in 0..watchers {
        streams.push(
            store
                .watch(Bytes::from(format!("{prefix}/")), Some(start_rev), WatchOptions { progress_interval: None })
                .await?,
        );
    }
    for mut stream in streams {
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(events);
            while lat.len() < events {
                match stream.next().await {
                    Some(Ok(WatchMessage::Events(evs))) => {
                        let now = epoch.elapsed();
                        for e in evs {
                            let sent = u64::from_le_bytes(e.kv.value[..8].try_into().unwrap_or([0; 8]));
                            lat.push(now.saturating_sub(Duration::from_nanos(sent)));
                        }
                    }
                    Some(Ok(WatchMessage::Progress(_))) => {}
                    Some(Err(_)) | None => break,
                }
            }
            let _ = done_tx.send(lat);
        });
    }
    drop(done_tx);
    let started = Instant::now();
    for i in 0..events {
        let mut value = (epoch.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
        value.resize(256, b'x');
        store.put(Bytes::from(format!("{prefix}/{}", i % 100)), Bytes::from(value)).await?;
    }
    let (all, finished) = gather(&mut done_rx).await?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(finished == watchers, "only {finished} of {watchers} watchers finished");
    anyhow::ensure!(all.len() == watchers * events, "delivered {} of {} events", all.len(), watchers * events);
    Ok(FanoutResult {
        delivered_per_sec: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
    })
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn store_bench(args: StoreBenchArgs) -> Result<()> {
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("atoll-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&base)?;
    let embedded: Arc<dyn Store> = Arc::new(store::embedded::EmbeddedStore::open(&base.join("embedded"))?);
    let etcd = start_etcd(args.no_etcd).await?;
    let value = Bytes::from(vec![b'v'; args.value_size]);
    println!("durable puts, {}-byte values, {} s per cell", args.value_size, args.seconds);
    println!("{:>6} | {:>24} | {:>24} | {:>6}", "conc", "embedded ops/s p50/p99 ms", "etcd ops/s p50/p99 ms", "ratio");
    for &c in &args.concurrency {
        let e = bench_puts(embedded.clone(), "/bench/put", c, args.seconds, value.clone()).await?;
        let cell = |r: &Rate| format!("{:>8.0} {:>6.2} {:>6.2}", r.per_sec, ms(r.p50), ms(r.p99));
        match &etcd {
            Some((_, client)) => {
                let d = bench_puts(client.clone(), "/bench/put", c, args.seconds, value.clone()).await?;
                println!("{c:>6} | {:>24} | {:>24} | {:>5.2}x", cell(&e), cell(&d), e.per_sec / d.per_sec);
            }
            None => println!("{c:>6} | {:>24} | {:>24} |", cell(&e), "-"),
        }
    }
    println!("watch fan-out: 1 writer, {} watchers, {} events", args.watchers, args.fanout_events);
    let e = bench_fanout(embedded.clone(), "/bench/fan", args.watchers, args.fanout_events).await?;
    println!(
        "embedded: {:>10.0} events/s delivered, latency p50 {:.2} ms p99 {:.2} ms",
        e.delivered_per_sec,
        ms(e.p50),
        ms(e.p99)
    );
    if let Some((_, client)) = &etcd {
        let d = bench_fanout(client.clone(), "/bench/fan", args.watchers, args.fanout_events).await?;
        println!(
            "etcd:     {:>10.0} events/s delivered, latency p50 {:.2} ms p99 {:.2} ms",
            d.delivered_per_sec,
            ms(d.p50),
            ms(d.p99)
        );
        println!("ratio (embedded/etcd) delivered/s: {:.2}x", e.delivered_per_sec / d.delivered_per_sec);
    }
    drop(embedded);
    drop(etcd);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(())
}

/// Times `iterations` password verifications (argon2id, the server's parameters) and as
/// many bearer-token verifications (ES256) as the peer: what a login costs against what
/// every later request costs.
fn password_bench(iterations: usize) -> Result<()> {
    use apiserver::authn::{password, token};
    let iterations = iterations.max(1);
    let percentiles = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
    };
    let hash = password::hash("correct horse battery staple").map_err(anyhow::Error::msg)?;
    let mut checks = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = std::time::Instant::now();
        anyhow::ensure!(password::verify("correct horse battery staple", &hash), "the password does not verify");
        checks.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let key = token::TokenKey::generate()?;
    let now = token::now();
    let signed = key.sign(&token::Claims::user("acme", "ann", Vec::new(), None, now, 3600))?;
    let mut tokens = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = std::time::Instant::now();
        key.verify(&signed, now)?;
        tokens.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let (p50, p99) = percentiles(checks);
    let (t50, t99) = percentiles(tokens);
    println!("argon2id password check ({hash_params}): p50 {p50:.2} ms, p99 {p99:.2} ms", hash_params = &hash[..30]);
    println!("ES256 token check: p50 {t50:.3} ms, p99 {t99:.3} ms ({:.0}x cheaper)", p50 / t50.max(1e-9));
    Ok(())
}
