//! The node agent: the image store, the runtimes that run pods, and the sync loop
//! (`atoll agent`) that converges the node onto the API's pods.
//!
//! Contract:
//! - Only [`os`] (and the [`shim`] supervisor process with its [`console`], and
//!   [`sessions`], which streams an exec's stdio, opens its terminal and dials
//!   port-forwards inside a pod's network namespace) make system calls; everything else asks
//!   [`os::Os`], so the logic is unit-tested against [`os::FakeOs`].
//! - [`images::ImageStore`] is an OCI image layout on disk: content-addressed blobs,
//!   each stored once, written only after their digest is checked.
//! - [`runtime::Runtime`] is the one interface for container and VM runtimes (a sandbox
//!   per pod, containers in it); [`runtime::oci::OciRuntime`] implements it over crun or
//!   runc and keeps all its state on disk, so it survives the agent's restart.
//!
//! - [`pull::Puller`] fetches images from OCI registries into the store (HTTPS unless a
//!   registry is listed insecure, digests checked before anything is stored);
//!   [`pod_images::PodImages`] applies `imagePullPolicy`, `imagePullSecrets` and the pull
//!   back-off for the sync loop, and never lets a pod use an image pulled with credentials
//!   it does not hold without asking the registry.
//! - [`daemon`] is `atoll agent`: [`node`] registration and heartbeat, the [`pods`] sync
//!   loop on the controllers crate's runtime, pod networks behind [`net::PodNetwork`].
//! - [`server`] is the agent's HTTPS port (logs, exec, attach, port-forward) for the API server only;
//!   [`stream`] speaks kubectl's WebSocket and SPDY stream protocols, [`sessions`] runs
//!   what they carry.

pub mod actions;
pub mod busybox;
pub mod busybox_vm;
pub mod console;
pub mod daemon;
pub mod images;
pub mod net;
pub mod netlink;
pub mod node;
pub mod os;
pub mod pod_images;
pub mod pods;
pub mod pull;
pub mod reference;
pub mod runtime;
pub mod sandbox_image;
pub mod sandbox_shim;
pub mod server;
pub mod sessions;
pub mod shim;
pub mod simulated;
pub mod stream;
pub mod timefmt;
pub mod vm_credentials;
