//! Pod networking behind one small trait, so tenant networks can replace it: a network
//! gives each pod sandbox a namespace to join and, usually, an address.
//!
//! [`LoopbackOnly`] is the first implementation: a fresh network namespace per pod (made
//! by the runtime) with only loopback up, and no pod IP. The node bridge (`atoll0`, veth
//! pairs, on-disk IPAM, NAT) comes next behind the same trait.

use crate::runtime::NetworkMode;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("setting up the network of pod {pod}: {detail}")]
    Setup { pod: String, detail: String },
}

/// A pod's place on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub mode: NetworkMode,
    /// The pod's IP, reported as `status.podIP`.
    pub ip: Option<String>,
}

pub trait PodNetwork: Send + Sync {
    /// Give pod `id` (its sandbox ID) a network; repeating it returns the same attachment.
    fn setup(&self, id: &str) -> Result<Attachment, NetError>;
    /// Release what `setup` made; absent is not an error.
    fn teardown(&self, id: &str) -> Result<(), NetError>;
    /// The attachment of a pod set up earlier (after an agent restart), if any.
    fn attachment(&self, id: &str) -> Option<Attachment>;
}

/// A network namespace of its own per pod, loopback only.
#[derive(Debug, Default)]
pub struct LoopbackOnly;

impl PodNetwork for LoopbackOnly {
    fn setup(&self, _id: &str) -> Result<Attachment, NetError> {
        Ok(Attachment { mode: NetworkMode::Isolated, ip: None })
    }
    fn teardown(&self, _id: &str) -> Result<(), NetError> {
        Ok(())
    }
    fn attachment(&self, _id: &str) -> Option<Attachment> {
        Some(Attachment { mode: NetworkMode::Isolated, ip: None })
    }
}
