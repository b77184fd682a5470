//! `atoll bench api`: the API server under load from this process, with the server in a
//! child process of its own: pod creates over HTTPS at several concurrencies, a LIST of
//! 10,000 pods, and watch delivery to 1,000 watchers; etcd's raw put rate at the same
//! concurrencies in the same run for the ratio.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::bench::{Rate, bench_puts, gather, ms, percentile, start_etcd, summarize};

#[derive(clap::Args)]
pub struct ApiBenchArgs {
    /// Seconds per create measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    concurrency: Vec<usize>,
    /// Pods in the LIST measurement.
    #[arg(long, default_value_t = 10_000)]
    list_pods: usize,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Objects created while the watchers watch.
    #[arg(long, default_value_t = 100)]
    watch_events: usize,
    /// Skip the etcd comparison.
    #[arg(long)]
    no_etcd: bool,
}

struct ServerProcess {
    child: Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_server() -> Result<ServerProcess> {
    let dir = std::env::temp_dir().join(format!("atoll-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut reader = BufReader::new(child.stdout.take().context("server stdout")?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let addr = line.trim().strip_prefix("listening on https://").context("the server did not start")?.to_string();
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    Ok(ServerProcess { child, addr, dir })
}

/// TLS settings for the administrator's identity.
fn tls_config(dir: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let pki = dir.join("pki");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.join("ca.crt"))? {
        roots.add(cert?)?;
    }
    let certs = CertificateDer::pem_file_iter(pki.join("admin.crt"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pki.join("admin.key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// One HTTP/1.1 connection over TLS.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

async fn connect(addr: &str, tls: &Arc<rustls::ClientConfig>) -> Result<Conn> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(ServerName::try_from("127.0.0.1")?, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn { sender, host: addr.to_string() })
}

impl Conn {
    async fn request(&mut self, method: &str, path: &str, body: Option<String>) -> Result<(u16, Bytes)> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn pod(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"app":"bench"}}}},"spec":{{"containers":[{{"name":"c","image":"busybox","command":["sleep","3600"],"resources":{{"requests":{{"cpu":"10m","memory":"16Mi"}}}}}}]}}}}"#
    )
}

async fn creates(addr: &str, tls: &Arc<rustls::ClientConfig>, ns: &str, concurrency: usize, secs: f64) -> Result<Rate> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut conn = connect(addr, tls).await?;
        let path = format!("/api/v1/namespaces/{ns}/pods");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let (status, body) = conn.request("POST", &path, Some(pod(&format!("p-{t}-{i}")))).await?;
                if status != 201 {
                    bail!("create returned {status}: {}", String::from_utf8_lossy(&body));
                }
                lat.push(t0.elapsed());
                i += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    summarize(tasks, started).await
}

async fn create_namespace(conn: &mut Conn, name: &str) -> Result<()> {
    let body = format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}"}}}}"#);
    let (status, body) = conn.request("POST", "/api/v1/namespaces", Some(body)).await?;
    if status != 201 {
        bail!("creating namespace {name}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

pub async fn run(args: ApiBenchArgs) -> Result<()> {
    let server = start_server()?;
    let tls = tls_config(&server.dir)?;
    let mut admin = connect(&server.addr, &tls).await?;
    let etcd = start_etcd(args.no_etcd).await?;

    println!("pod creates over HTTPS (one connection per client), {} s per cell", args.seconds);
    println!(
        "{:>6} | {:>26} | {:>26} | {:>6}",
        "conc", "API creates/s p50/p99 ms", "etcd raw puts/s p50/p99 ms", "ratio"
    );
    for &c in &args.concurrency {
        let ns = format!("create-{c}");
        create_namespace(&mut admin, &ns).await?;
        let api = creates(&server.addr, &tls, &ns, c, args.seconds).await?;
        let cell = |r: &Rate| format!("{:>9.0} {:>7.2} {:>7.2}", r.per_sec, ms(r.p50), ms(r.p99));
        match &etcd {
            Some((_, store)) => {
                let raw =
                    bench_puts(store.clone(), "/bench", c, args.seconds, Bytes::from(pod("x").into_bytes())).await?;
                println!("{c:>6} | {:>26} | {:>26} | {:>5.2}x", cell(&api), cell(&raw), api.per_sec / raw.per_sec);
            }
            None => println!("{c:>6} | {:>26} | {:>26} |", cell(&api), "-"),
        }
    }

    // LIST of N pods in one namespace.
    create_namespace(&mut admin, "list").await?;
    let fill = 64.min(args.list_pods.max(1));
    let mut fillers = Vec::new();
    for t in 0..fill {
        let mut conn = connect(&server.addr, &tls).await?;
        let n = args.list_pods;
        fillers.push(tokio::spawn(async move {
            for i in (t..n).step_by(fill) {
                let (status, _) =
                    conn.request("POST", "/api/v1/namespaces/list/pods", Some(pod(&format!("l-{i}")))).await?;
                if status != 201 {
                    bail!("filling: {status}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for f in fillers {
        f.await??;
    }
    let mut lists = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let t0 = Instant::now();
        let (status, body) = admin.request("GET", "/api/v1/namespaces/list/pods", None).await?;
        lists.push(t0.elapsed());
        if status != 200 {
            bail!("list returned {status}");
        }
        size = body.len();
    }
    lists.sort_unstable();
    println!(
        "LIST of {} pods ({:.1} MiB): median {:.1} ms, max {:.1} ms (5 runs)",
        args.list_pods,
        size as f64 / (1 << 20) as f64,
        ms(percentile(&lists, 0.5)),
        ms(*lists.last().unwrap_or(&Duration::ZERO))
    );

    // Watch delivery: many watchers, one writer.
    create_namespace(&mut admin, "watch").await?;
    let (_, body) = admin.request("GET", "/api/v1/namespaces/watch/configmaps", None).await?;
    let rv = serde_json::from_slice::<serde_json::Value>(&body)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Duration>>();
    for _ in 0..args.watchers {
        let mut conn = connect(&server.addr, &tls).await?;
        let path = format!("/api/v1/namespaces/watch/configmaps?watch=1&resourceVersion={rv}");
        let req = Request::builder().uri(path).header("host", &conn.host).body(Full::new(Bytes::new()))?;
        conn.sender.ready().await?;
        let resp = conn.sender.send_request(req).await?;
        let (sent, done_tx, want) = (sent.clone(), done_tx.clone(), args.watch_events);
        tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            let mut lat = Vec::with_capacity(want);
            while lat.len() < want {
                let Some(Ok(frame)) = body.frame().await else { break };
                let Ok(data) = frame.into_data() else { continue };
                let now = Instant::now();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
                    let name = event["object"]["metadata"]["name"].as_str().unwrap_or("").to_string();
                    if let Some(t) = sent.lock().ok().and_then(|m| m.get(&name).copied()) {
                        lat.push(now.saturating_duration_since(t));
                    }
                }
            }
            let _ = done_tx.send(lat);
        });
    }
    drop(done_tx);
    let started = Instant::now();
    for i in 0..args.watch_events {
        let name = format!("w{i}");
        if let Ok(mut m) = sent.lock() {
            m.insert(name.clone(), Instant::now());
        }
        let body =
            format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"k":"v"}}}}"#);
        admin.request("POST", "/api/v1/namespaces/watch/configmaps", Some(body)).await?;
    }
    let (all, finished) = gather(&mut done_rx).await?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "watch: {} watchers x {} events: {}/{} delivered by {finished} watchers, {:.0} events/s, latency p50 {:.2} ms p99 {:.2} ms",
        args.watchers,
        args.watch_events,
        all.len(),
        args.watchers * args.watch_events,
        all.len() as f64 / elapsed,
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99))
    );
    Ok(())
}
