//! `atoll image ...`: the node's image store from the command line.

use std::path::PathBuf;
use std::sync::Arc;

use agent::images::ImageStore;
use agent::os::RealOs;
use anyhow::{Context, Result};

#[derive(clap::Args, Clone, Debug)]
pub struct ImageStoreArgs {
    /// The agent's data directory; images live in `DIR/agent/images`.
    #[arg(long, default_value = "/var/lib/atoll")]
    pub data_dir: PathBuf,
}

impl ImageStoreArgs {
    pub fn open(&self) -> Result<ImageStore> {
        let root = self.data_dir.join("agent/images");
        ImageStore::open(&root, Arc::new(RealOs::new()))
            .with_context(|| format!("opening the image store in {}", root.display()))
    }
}

/// How the node reaches image registries (shared by `atoll agent`, `atoll up` and
/// `atoll image pull|push`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// A registry (`host:port`) spoken to over plain HTTP; repeatable. None by default.
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
    /// A PEM file of CA certificates trusted for registries besides the system's; repeatable.
    #[arg(long = "registry-ca")]
    pub registry_ca: Vec<PathBuf>,
    /// The node's registry credentials: a Docker config file (`{"auths": {...}}`).
    #[arg(long = "registry-config")]
    pub registry_config: Option<PathBuf>,
}

impl RegistryArgs {
    pub fn config(&self) -> agent::pull::RegistryConfig {
        agent::pull::RegistryConfig {
            insecure: self.insecure_registry.clone(),
            ca_files: self.registry_ca.clone(),
            credentials_file: self.registry_config.clone(),
        }
    }
}

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry into the store (credentials from --registry-config).
    Pull {
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        store: ImageStoreArgs,
    },
    /// Push an image of the store to a registry under another name (e.g.
    /// `127.0.0.1:5000/team/busybox:v1`; credentials from --registry-config).
    Push {
        /// The image in the store.
        source: String,
        /// Where to push it.
        target: String,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        store: ImageStoreArgs,
    },
    /// Import an OCI image layout directory, an OCI archive or a `docker save` tarball
    /// (optionally gzip-compressed).
    Import {
        path: PathBuf,
        /// Name the imported image (e.g. `busybox:1.36`); needed when the input names none.
        #[arg(long)]
        name: Option<String>,
        /// PATH is a VM's disk (raw or qcow2), not an image: make a disk-only VM image of
        /// it (needs --name), whose VMs boot the disk through the firmware.
        #[arg(long, requires = "name")]
        vm_disk: bool,
        #[command(flatten)]
        store: ImageStoreArgs,
    },
    /// List the images in the store.
    List {
        #[command(flatten)]
        store: ImageStoreArgs,
    },
    /// Remove an image's name (its content goes with the agent's next garbage collection).
    Rm {
        reference: String,
        #[command(flatten)]
        store: ImageStoreArgs,
    },
    /// Build a small `busybox` image from a static busybox binary (Debian's
    /// busybox-static) and import it, so pods can run with no network.
    BuildBusybox {
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        #[arg(long, default_value = "busybox:latest")]
        name: String,
        #[command(flatten)]
        store: ImageStoreArgs,
    },
    /// Build the `busybox-vm` VM image (a kernel, an initramfs with busybox and our guest
    /// init, a small data disk) and import it, so VM pods run with no network.
    BuildBusyboxVm {
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// The guest kernel (e.g. Debian's cloud kernel, which `scripts/lib.sh` extracts).
        #[arg(long)]
        kernel: PathBuf,
        /// The kernel's modules folder (`lib/modules/<version>`); needed when virtio is
        /// built as modules, as in Debian's kernels.
        #[arg(long)]
        modules: Option<PathBuf>,
        #[arg(long, default_value = "busybox-vm:latest")]
        name: String,
        /// The guest agent to put in the initramfs (for `kubectl exec`); by default
        /// `atoll-guest` beside this binary.
        #[arg(long)]
        guest: Option<PathBuf>,
        /// Build the image without the guest agent (its VMs have no exec).
        #[arg(long, conflicts_with = "guest")]
        no_guest_agent: bool,
        #[command(flatten)]
        store: ImageStoreArgs,
    },
}

pub async fn run(cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Pull { reference, registry, store } => {
            let r = agent::reference::Reference::parse(&reference)?;
            let config = registry.config();
            let puller = agent::pull::Puller::new(Arc::new(store.open()?), &config)?;
            let start = std::time::Instant::now();
            let agent::pull::Pulled { image, stats, .. } = puller
                .pull_uncoalesced(&r, &config.node_credentials(&r))
                .await
                .with_context(|| format!("pulling {r}"))?;
            println!(
                "pulled {r} {}: {} blobs fetched ({}), {} already present",
                image.manifest_digest,
                stats.blobs_fetched,
                agent::pull::throughput(stats.bytes, start.elapsed()),
                stats.blobs_skipped
            );
            Ok(())
        }
        ImageCommand::Push { source, target, registry, store } => {
            let images = Arc::new(store.open()?);
            let image = images.resolve(&source).with_context(|| format!("finding {source}"))?;
            let target = agent::reference::Reference::parse(&target)?;
            let config = registry.config();
            let credential = config.node_credentials(&target).into_iter().next();
            let puller = agent::pull::Puller::new(images, &config)?;
            let digest =
                puller.push(&image, &target, credential.as_ref()).await.with_context(|| format!("pushing {target}"))?;
            println!("pushed {target} {digest}");
            Ok(())
        }
        ImageCommand::Import { path, name, vm_disk, store } => {
            let images = store.open()?;
            let scratch = tempfile::Builder::new().prefix("vm-disk-").tempdir_in(images.root().join("tmp"))?;
            let path = if vm_disk {
                let layout = scratch.path().join("layout");
                let name = name.as_deref().context("--vm-disk needs --name")?;
                agent::busybox_vm::disk_layout(&path, &layout, name)
                    .with_context(|| format!("making a VM image of {}", path.display()))?;
                layout
            } else {
                path
            };
            let images =
                images.import(&path, name.as_deref()).with_context(|| format!("importing {}", path.display()))?;
            for image in images {
                println!("imported {} {}", image.names.join(","), image.manifest_digest);
            }
            Ok(())
        }
        ImageCommand::List { store } => {
            println!("{:<50} {:<20} {:>10}", "NAME", "IMAGE ID", "SIZE");
            for image in store.open()?.list()? {
                let id = &image.id.hex()[..12];
                let size = format!("{:.1}MB", image.size() as f64 / 1e6);
                for name in &image.names {
                    println!("{name:<50} {id:<20} {size:>10}");
                }
            }
            Ok(())
        }
        ImageCommand::Rm { reference, store } => {
            let images = store.open()?;
            let name = agent::reference::Reference::parse(&reference)?;
            anyhow::ensure!(images.untag(&name)?, "no image named {name}");
            println!("untagged {name}");
            Ok(())
        }
        ImageCommand::BuildBusybox { busybox, name, store } => {
            let images = store.open()?;
            let layout = tempfile::Builder::new().prefix("busybox-").tempdir_in(images.root().join("tmp"))?;
            agent::busybox::build_layout(&busybox, layout.path(), &name)
                .with_context(|| format!("building an image from {}", busybox.display()))?;
            for image in images.import(layout.path(), None)? {
                println!("imported {} {}", image.names.join(","), image.manifest_digest);
            }
            Ok(())
        }
        ImageCommand::BuildBusyboxVm { busybox, kernel, modules, name, guest, no_guest_agent, store } => {
            let images = store.open()?;
            let guest = match (guest, no_guest_agent) {
                (_, true) => None,
                (Some(g), false) => Some(g),
                (None, false) => Some(std::env::current_exe()?.with_file_name("atoll-guest")),
            };
            if let Some(g) = &guest {
                anyhow::ensure!(g.is_file(), "no guest agent at {} (or pass --no-guest-agent)", g.display());
            }
            let work = tempfile::Builder::new().prefix("busybox-vm-").tempdir_in(images.root().join("tmp"))?;
            let layout = work.path().join("layout");
            agent::busybox_vm::build_layout(
                &RealOs::new(),
                &busybox,
                &kernel,
                modules.as_deref(),
                guest.as_deref(),
                work.path(),
                &layout,
                &name,
            )
            .with_context(|| format!("building a VM image from {}", kernel.display()))?;
            for image in images.import(&layout, None)? {
                println!("imported {} {}", image.names.join(","), image.manifest_digest);
            }
            Ok(())
        }
    }
}
