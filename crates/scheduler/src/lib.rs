//! The scheduler: which node each pod runs on.
//!
//! - [`core::schedule`] is the decision, pure: a [`Snapshot`] and a [`Pod`] in, a
//!   [`Decision`] out (a node, or why none fits with a count of nodes per reason).
//! - [`Snapshot`] is the cluster as decisions see it, updated one change at a time (a node
//!   or a pod added, changed or removed costs O(1) of bookkeeping), never rebuilt.
//! - [`run`] is the loop around it: watches of nodes, pods of every tenant and tenants
//!   (through the controller runtime's watcher), a queue of pending pods, bindings sent
//!   concurrently through the `binding` subresource while pods count as placed
//!   ("assumed") until the watch confirms them, and for pods that fit nowhere a
//!   `FailedScheduling` event, a `PodScheduled=False` condition and a retry with back-off
//!   when the cluster changes.
//!
//! Tenant-exclusive placement: a Tenant with `spec.exclusiveNodes: true` never shares a
//! node with another tenant's pods, in both directions. The system tenant's pods
//! (infrastructure) are exempt.

pub mod core;
pub mod model;
pub use api::quantity;
pub mod run;
pub mod snapshot;

pub use core::{Decision, Unfit, schedule};
pub use model::{Node, Pod, PodKey};
pub use run::{Config, run};
pub use snapshot::Snapshot;
