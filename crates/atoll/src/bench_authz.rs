//! `atoll bench authz`: the per-request cost of the authorization stage (the in-memory
//! RBAC index, lock included) over an embedded store filled with many tenants' roles and
//! bindings, against the peer it replaces: one store read per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use apiserver::authz::Authz;
use apiserver::http::User;
use apiserver::registry::{Registry, Scope, Strategy};
use serde_json::json;
use store::Store;

#[derive(clap::Args)]
pub struct AuthzBenchArgs {
    #[arg(long, default_value_t = 20)]
    tenants: usize,
    /// Namespaces per tenant.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Roles and RoleBindings per namespace (each binds a user of its own).
    #[arg(long, default_value_t = 20)]
    bindings: usize,
    /// ClusterRoleBindings per tenant, besides the defaults.
    #[arg(long, default_value_t = 20)]
    cluster_bindings: usize,
    #[arg(long, default_value_t = 1_000_000)]
    iterations: usize,
}

fn per_op_ns(started: Instant, n: usize) -> f64 {
    started.elapsed().as_secs_f64() * 1e9 / n as f64
}

pub async fn run(args: AuthzBenchArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("atoll-bench-authz-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store: Arc<dyn Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.join("store"))?);
    let registries: BTreeMap<(String, String), Arc<Registry>> = apiserver::authz::kinds::rbac_strategies()
        .into_iter()
        .map(|k| {
            let key = (k.info().group.clone(), k.info().resource.clone());
            (key, Arc::new(Registry::new(store.clone(), Arc::new(k))))
        })
        .collect();
    let get = |r: &str| registries.get(&("rbac.authorization.k8s.io".to_string(), r.to_string())).cloned();
    let (roles, role_bindings, cluster_role_bindings) = (
        get("roles").context("roles")?,
        get("rolebindings").context("rolebindings")?,
        get("clusterrolebindings").context("clusterrolebindings")?,
    );
    let authz = Authz::start(&registries).await?;
    let filling = Instant::now();
    let mut objects = 0;
    for t in 0..args.tenants {
        let tenant = format!("t{t}");
        apiserver::authz::bootstrap::ensure_tenant(&authz, &tenant, &["admin".to_string()]).await?;
        let cluster = Scope { tenant: Some(tenant.clone()), namespace: None };
        for c in 0..args.cluster_bindings {
            let crb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": format!("crb{c}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": format!("viewer{c}")}]});
            cluster_role_bindings.create(&cluster, crb, false).await?;
            objects += 1;
        }
        for n in 0..args.namespaces {
            let scope = Scope { tenant: Some(tenant.clone()), namespace: Some(format!("ns{n}")) };
            for b in 0..args.bindings {
                let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": format!("r{b}")},
                    "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"],
                               "resourceNames": [format!("cm{b}")]},
                              {"verbs": ["get"], "apiGroups": ["apps"], "resources": ["deployments"]}]});
                roles.create(&scope, role, false).await?;
                let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": format!("rb{b}")},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("r{b}")},
                    "subjects": [{"kind": "User", "name": format!("user{b}")}, {"kind": "Group", "name": "g"}]});
                role_bindings.create(&scope, rb, false).await?;
                objects += 2;
            }
        }
    }
    // Let the index catch up with everything written.
    let revision = store.current_revision().await?;
    for kind in apiserver::authz::kinds::RbacKind::ALL {
        authz.wait_for(kind, revision).await;
    }
    println!(
        "filled {objects} roles and bindings (plus {} defaults per tenant) in {} tenants in {:.1}s",
        12,
        args.tenants,
        filling.elapsed().as_secs_f64()
    );

    let last = args.bindings.saturating_sub(1);
    let tenant = format!("t{}", args.tenants / 2);
    let user = |name: String| User { name, groups: vec!["system:authenticated".into()], tenant: tenant.clone() };
    let parse = |method: &str, path: &str| api::request::parse(method, path, None).context("parse");
    let cases = [
        (
            "allowed by the namespace's last RoleBinding (resourceNames)",
            user(format!("user{last}")),
            parse("GET", &format!("/api/v1/namespaces/ns0/configmaps/cm{last}"))?,
            true,
        ),
        (
            "allowed by a ClusterRoleBinding (view)",
            user("viewer0".into()),
            parse("GET", "/api/v1/namespaces/ns3/pods")?,
            true,
        ),
        (
            "denied after every binding",
            user("nobody".into()),
            parse("DELETE", "/api/v1/namespaces/ns1/secrets/s")?,
            false,
        ),
        ("discovery (system:discovery)", user("nobody".into()), parse("GET", "/apis")?, true),
    ];
    println!("per decision, {} iterations each, one thread:", args.iterations);
    for (what, user, info, want) in &cases {
        let t = Some(tenant.as_str());
        anyhow::ensure!(authz.authorize(user, t, info, None).is_ok() == *want, "{what}: unexpected decision");
        let started = Instant::now();
        let mut allowed = 0usize;
        for _ in 0..args.iterations {
            allowed += usize::from(authz.authorize(user, t, info, None).is_ok());
        }
        println!("  {what}: {:.0} ns ({allowed} allowed)", per_op_ns(started, args.iterations));
    }
    // The peer: the one store read a store-backed authorizer would need per request.
    let reads = args.iterations.min(100_000);
    let scope = Scope { tenant: Some(tenant.clone()), namespace: Some("ns0".into()) };
    let started = Instant::now();
    for _ in 0..reads {
        role_bindings.get(&scope, &format!("rb{last}")).await?;
    }
    println!("peer: one RoleBinding read from the embedded store: {:.0} ns", per_op_ns(started, reads));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
