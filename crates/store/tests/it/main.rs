//! Integration tests of the store: the shared conformance suite run against each backend,
//! plus tests of what only one backend has (the embedded log's recovery; etcd clustering).

mod conformance;
mod embedded;
mod etcd_cluster;

mod embedded_conformance {
    use std::sync::Arc;

    use store::Store;
    use store::embedded::EmbeddedStore;

    crate::conformance::backend_tests!({
        let dir = tempfile::tempdir()?;
        let store = EmbeddedStore::open(dir.path())?;
        (Arc::new(store) as Arc<dyn Store>, dir)
    });
}

mod etcd_conformance {
    use std::sync::Arc;

    use store::Store;
    use store::etcd::EtcdStore;
    use store::etcd_process::EtcdProcess;

    crate::conformance::backend_tests!({
        let etcd = EtcdProcess::start()?;
        let store = EtcdStore::connect(&[etcd.endpoint()]).await?;
        (Arc::new(store) as Arc<dyn Store>, etcd)
    });
}
