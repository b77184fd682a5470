//! The controller runtime and Atoll's controllers.
//!
//! The runtime: a [`watcher`] (list, then watch from the list's revision, re-list on
//! 410 Gone, re-watch on disconnect, back-off on errors), a [`cache`] per watch (replaced
//! at once on a re-list), a de-duplicating [`queue`] with per-key back-off that never
//! hands one key to two workers, and the [`controller`] loop around a `Reconciler`.
//!
//! Controllers read and write cluster state only through the `client` crate, so
//! authentication, tenancy and admission apply to them as to everyone else. They run as
//! `system:atoll-controllers`, whose rights are the system tenant's ClusterRole of that
//! name (`apiserver::authz::bootstrap`).

pub mod auth;
pub mod cache;
pub mod controller;
pub mod deployment;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod informer;
pub mod namespace;
pub mod nodelifecycle;
pub mod queue;
pub mod replicaset;
pub mod serviceaccount;
pub mod tenant;
pub mod watcher;
pub mod workload;

use std::future::Future;
use std::sync::Arc;

pub use cache::{Cache, ObjectKey};
pub use controller::{Action, Controller, OnError, Reconciler};
pub use informer::Informer;
pub use queue::{Backoff, WorkQueue};
pub use watcher::{ApiSource, Event, Watcher};

/// Every tenant's pods as the controllers of this process read them, watched, decoded and held
/// once for all of them: [`cache::pod_essentials`] of each pod, indexed by controlling
/// ReplicaSet ([`replicaset::OWNER_INDEX`]) and by node ([`nodelifecycle::NODE_INDEX`]).
pub fn pod_informer(client: client::Client) -> Arc<Informer> {
    let source = ApiSource::new(client, client::Resource::pods(), client::Scope::all_tenants())
        .keeping(cache::keep_pod_essentials());
    let cache = Cache::default()
        .with_index(replicaset::OWNER_INDEX, replicaset::pod_index)
        .with_index(nodelifecycle::NODE_INDEX, nodelifecycle::node_name);
    Informer::new(Watcher::new(source, "pods (controllers)"), cache)
}

/// Runs every controller over `client` until `shutdown` resolves, then stops them all.
pub async fn run_all(client: client::Client, lifecycle: nodelifecycle::Config, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let pods = pod_informer(client.clone());
    let pod_watch = pods.clone().run(stop_rx.clone());
    let nodes = nodelifecycle::controller(client.clone(), lifecycle, &pods).run(stopped(stop_rx.clone()));
    let service_accounts = serviceaccount::controller(client.clone()).run(stopped(stop_rx.clone()));
    let namespaces = namespace::controller(client.clone()).run(stopped(stop_rx.clone()));
    let auth = auth::controller(client.clone()).run(stopped(stop_rx.clone()));
    let tenants = tenant::controller(client.clone()).run(stopped(stop_rx.clone()));
    let workloads = async {
        tokio::join!(
            replicaset::controller(client.clone(), &pods).run(stopped(stop_rx.clone())),
            deployment::controller(client.clone()).run(stopped(stop_rx.clone())),
            gc::run(client, stopped(stop_rx)),
        )
    };
    let all = async {
        tokio::join!(pod_watch, nodes, service_accounts, namespaces, tenants, auth, workloads);
    };
    tokio::pin!(all);
    let finished = tokio::select! {
        _ = shutdown => false,
        _ = &mut all => true,
    };
    let _ = stop_tx.send(true);
    if !finished {
        all.await;
    }
}
