//! `atoll bench container`: how long one container takes to start on this machine, from
//! the runtime's create call to the moment it runs, through the real OCI runtime and the
//! supervisor (the agent's part of pod start-up; image unpacking is done once before).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::os::RealOs;
use agent::runtime::oci::{OciConfig, OciRuntime};
use agent::runtime::{ContainerSpec, ContainerState, ImageRootfs, NetworkMode, Resources, Runtime, SandboxSpec};
use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct ContainerBenchArgs {
    /// Containers to start, one after another.
    #[arg(long, default_value_t = 20)]
    count: usize,
    /// OCI runtime (crun or runc, or a path).
    #[arg(long, default_value = "crun")]
    runtime: PathBuf,
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
}

pub fn run(args: ContainerBenchArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let os = Arc::new(RealOs::new());
    let images = agent::images::ImageStore::open(&dir.path().join("images"), os.clone())?;
    let layout = dir.path().join("layout");
    agent::busybox::build_layout(&args.busybox, &layout, "busybox")?;
    let image = images.import(&layout, None)?.remove(0);
    let rootfs = ImageRootfs {
        reference: "busybox".into(),
        layers: images.layer_dirs(&image)?,
        config: image.config.config.clone().unwrap_or_default(),
    };
    let shim = vec![std::env::current_exe().context("finding our own binary")?.into(), "shim".into()];
    let mut cfg = OciConfig::new(&args.runtime, shim, dir.path().join("runtime"));
    cfg.cgroup_parent = format!("atoll-bench-{}", std::process::id());
    let rt = OciRuntime::new(cfg, os)?;
    let sandbox = SandboxSpec {
        id: "bench".into(),
        name: "bench".into(),
        namespace: "default".into(),
        tenant: "system".into(),
        hostname: "bench".into(),
        network: NetworkMode::Isolated,
        runtime_handler: String::new(),
    };
    rt.run_sandbox(&sandbox)?;
    let (mut create, mut total) = (Vec::new(), Vec::new());
    let result = (|| -> Result<()> {
        for i in 0..args.count {
            let spec = ContainerSpec {
                name: format!("c{i}"),
                image: rootfs.clone(),
                command: Some(vec!["sleep".into(), "1000".into()]),
                args: None,
                env: vec![],
                working_dir: None,
                user: None,
                resources: Resources { memory_limit_bytes: Some(64 << 20), ..Resources::default() },
                log_path: None,
                stdin: false,
                stdin_once: false,
                tty: false,
                vm: None,
            };
            let t = Instant::now();
            let id = rt.create_container("bench", &spec)?;
            create.push(t.elapsed());
            rt.start_container(&id)?;
            anyhow::ensure!(
                rt.container_status(&id)?.state == ContainerState::Running,
                "container {id} is not running"
            );
            total.push(t.elapsed());
            rt.remove_container(&id)?;
        }
        Ok(())
    })();
    rt.remove_sandbox("bench")?;
    for h in agent::os::Os::cgroup_hierarchies(&RealOs::new(), std::path::Path::new("/sys/fs/cgroup"))? {
        let _ = std::fs::remove_dir(h.join(format!("atoll-bench-{}", std::process::id())));
    }
    result?;
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    println!("runtime {}: {} containers, create+start to running", args.runtime.display(), args.count);
    println!(
        "  create (bundle, overlay, supervisor, runtime create): p50 {:?} p99 {:?}",
        pct(&mut create, 0.5),
        pct(&mut create, 0.99)
    );
    println!(
        "  create + start:                                       p50 {:?} p99 {:?}",
        pct(&mut total, 0.5),
        pct(&mut total, 0.99)
    );
    Ok(())
}
