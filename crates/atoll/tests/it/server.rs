//! `atoll server` starts over a store and answers its health and version endpoints.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, ensure};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> Result<String> {
    let mut conn = TcpStream::connect(addr)?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn server_serves_health_and_version_over_the_embedded_store() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line.trim().strip_prefix("listening on ").context("no listening line")?.to_string();
    let health = get(&addr, "/healthz")?;
    ensure!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok"), "healthz: {health}");
    let version = get(&addr, "/version")?;
    ensure!(version.contains("\"gitVersion\""), "version: {version}");
    let missing = get(&addr, "/api/v1/pods")?;
    ensure!(missing.starts_with("HTTP/1.1 404") && missing.contains("\"kind\":\"Status\""), "{missing}");
    ensure!(dir.path().join("store/wal").is_dir(), "the embedded store lives in the data directory");
    drop(server);
    Ok(())
}
