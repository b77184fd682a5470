//! Atoll's own components under least privilege: a node agent's identity reaches only its
//! own Node, Lease and pods (node restriction), the controllers' and the scheduler's only
//! what their roles grant, and none of these identities is honoured when a tenant's
//! certificate claims it. And the controllers, killed in the middle of a tenant's deletion
//! and started again, still leave nothing of the tenant in the store.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::isolation::{Caller, caller};
use crate::server::{Kubectl, Server, tenant_json};

fn pod(name: &str, node: Option<&str>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

/// A kubeconfig for `user` of `tenant` in `group`, from `atoll admin kubeconfig`.
fn identity(server: &Server, tenant: &str, user: &str, group: &str) -> Result<std::path::PathBuf> {
    let config = server.dir.path().join(format!("{tenant}-{}.kubeconfig", user.replace(':', "-")));
    let status = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["admin", "kubeconfig", "--tenant", tenant, "--user", user, "--group", group, "--data-dir"])
        .arg(server.dir.path())
        .arg("--output")
        .arg(&config)
        .status()?;
    ensure!(status.success(), "atoll admin kubeconfig failed");
    Ok(config)
}

/// Sends one request and checks its status code; returns the answer.
async fn expect(c: &Caller, method: &'static str, path: &str, body: Option<Value>, code: u16) -> Result<String> {
    let content_type = if method == "PATCH" { "application/merge-patch+json" } else { "application/json" };
    let x = c.send(method, path, "application/json", body.map(|b| (content_type, b.to_string()))).await;
    ensure!(x.code == code, "{} {method} {path} -> {}, wanted {code}: {}", c.who, x.code, x.answer);
    Ok(x.answer)
}

const WEB: &str = "/api/v1/tenants/acme/namespaces/web";

#[test]
fn node_agents_and_components_reach_only_what_they_need() -> Result<()> {
    let server = Server::start()?;
    let admin_k = Kubectl::new(33, &server)?;
    admin_k.ok_with(&["create", "-f", "-"], Some(&tenant_json("acme")))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let admin = caller("admin", &server.kubeconfig())?;
    let n1 = caller("system:node:n1", &server.component_kubeconfig("node:n1")?)?;
    let n2 = caller("system:node:n2", &server.component_kubeconfig("node:n2")?)?;
    let scheduler = caller("scheduler", &server.component_kubeconfig("scheduler")?)?;
    let controllers = caller("controllers", &server.component_kubeconfig("controllers")?)?;
    // Certificates of tenant acme that claim the components' names and groups.
    let fake_node = caller("acme's system:node:n1", &identity(&server, "acme", "system:node:n1", "system:nodes")?)?;
    let fake_controllers = caller(
        "acme's controllers",
        &identity(&server, "acme", "system:atoll-controllers", "system:atoll-controllers")?,
    )?;

    rt.block_on(async {
        let a = &admin;
        expect(a, "POST", "/api/v1/tenants/acme/namespaces", Some(json!({"metadata": {"name": "web"}})), 201).await?;
        expect(a, "POST", &format!("{WEB}/pods"), Some(pod("p1", Some("n1"))), 201).await?;
        expect(a, "POST", &format!("{WEB}/pods"), Some(pod("p2", Some("n2"))), 201).await?;
        expect(a, "POST", &format!("{WEB}/pods"), Some(pod("p0", None)), 201).await?;
        expect(a, "POST", "/api/v1/namespaces/default/pods", Some(pod("p3", Some("n1"))), 201).await?;
        let secret = json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}});
        expect(a, "POST", &format!("{WEB}/secrets"), Some(secret), 201).await?;
        expect(a, "POST", &format!("{WEB}/secrets"), Some(json!({"metadata": {"name": "t"}})), 201).await?;
        let mut p4 = pod("p4", Some("n1"));
        p4["spec"]["volumes"] = json!([{"name": "v", "secret": {"secretName": "s"}}]);
        expect(a, "POST", &format!("{WEB}/pods"), Some(p4), 201).await?;
        expect(a, "POST", "/api/v1/nodes", Some(json!({"metadata": {"name": "n2"}})), 201).await?;

        // Its own Node and Lease, and nobody else's.
        let node = |n: &str| Some(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}));
        expect(&n1, "POST", "/api/v1/nodes", node("n1"), 201).await?;
        expect(&n1, "POST", "/api/v1/nodes", node("n9"), 403).await?;
        expect(&n1, "GET", "/api/v1/nodes/n1", None, 200).await?;
        expect(&n1, "GET", "/api/v1/nodes/n2", None, 403).await?;
        expect(&n1, "GET", "/api/v1/nodes", None, 403).await?;
        let label = || Some(json!({"metadata": {"labels": {"seen": "yes"}}}));
        expect(&n1, "PATCH", "/api/v1/nodes/n1", label(), 200).await?;
        expect(&n1, "PATCH", "/api/v1/nodes/n1/status", label(), 200).await?;
        expect(&n1, "PATCH", "/api/v1/nodes/n2/status", label(), 403).await?;
        // NodeRestriction on its own Node: no protected labels, no taint changes.
        let n1_node = "/api/v1/nodes/n1";
        let labels = |k: &str, v: Value| Some(json!({"metadata": {"labels": {k: v}}}));
        let restricted = "node-restriction.kubernetes.io/trusted";
        expect(&n1, "PATCH", n1_node, labels(restricted, json!("yes")), 403).await?;
        expect(&n1, "PATCH", n1_node, labels("node-role.kubernetes.io/control-plane", json!("")), 403).await?;
        expect(&n1, "PATCH", n1_node, labels("topology.kubernetes.io/zone", json!("z1")), 200).await?;
        expect(a, "PATCH", n1_node, labels(restricted, json!("yes")), 200).await?;
        expect(&n1, "PATCH", n1_node, labels(restricted, Value::Null), 403).await?;
        expect(&n1, "PATCH", n1_node, labels(restricted, json!("no")), 403).await?;
        expect(&n1, "PATCH", n1_node, labels("seen", json!("again")), 200).await?;
        let taints = |t: Value| Some(json!({"spec": {"taints": t}}));
        let taint = json!([{"key": "example.com/maintenance", "effect": "NoSchedule"}]);
        expect(&n1, "PATCH", n1_node, taints(taint.clone()), 403).await?;
        expect(a, "PATCH", n1_node, taints(taint), 200).await?;
        expect(&n1, "PATCH", n1_node, taints(json!([])), 403).await?;
        expect(&n1, "PATCH", &format!("{n1_node}/status"), Some(json!({"status": {"phase": "Running"}})), 200).await?;
        expect(&n1, "DELETE", "/api/v1/nodes/n1", None, 403).await?;
        expect(&n1, "GET", "/api/v1/tenants/acme/nodes/n1", None, 403).await?;
        let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
        let lease = |n: &str| Some(json!({"metadata": {"name": n}, "spec": {"holderIdentity": n}}));
        expect(&n1, "POST", leases, lease("n1"), 201).await?;
        expect(&n1, "POST", leases, lease("n2"), 403).await?;
        expect(&n1, "PATCH", &format!("{leases}/n1"), Some(json!({"spec": {"leaseDurationSeconds": 40}})), 200).await?;
        expect(&n1, "GET", &format!("{leases}/n2"), None, 403).await?;
        expect(&n1, "POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", lease("n1"), 403).await?;

        // Pods: only those bound to it, listed only with the selector that says so.
        let mine = "/api/v1/tenants/all/pods?fieldSelector=spec.nodeName%3Dn1";
        let listed = expect(&n1, "GET", mine, None, 200).await?;
        let names: Vec<String> = serde_json::from_str::<Value>(&listed)?["items"]
            .as_array()
            .context("items")?
            .iter()
            .filter_map(|p| p.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string))
            .collect();
        ensure!(names.len() == 3 && ["p1", "p3", "p4"].iter().all(|p| names.contains(&p.to_string())), "{names:?}");
        let watched = expect(&n1, "GET", &format!("{mine}&watch=1&timeoutSeconds=1"), None, 200).await?;
        ensure!(watched.contains("\"p1\"") && !watched.contains("\"p2\""), "{watched}");
        expect(&n1, "GET", "/api/v1/tenants/all/pods?fieldSelector=spec.nodeName%3Dn2", None, 403).await?;
        expect(&n1, "GET", "/api/v1/tenants/all/pods", None, 403).await?;
        expect(&n1, "GET", &format!("{WEB}/pods"), None, 403).await?;
        expect(&n1, "GET", &format!("{WEB}/pods/p1"), None, 200).await?;
        // Another node's pod and no pod at all are refused alike.
        let elsewhere = expect(&n1, "GET", &format!("{WEB}/pods/p2"), None, 403).await?;
        let nowhere = expect(&n1, "GET", &format!("{WEB}/pods/px"), None, 403).await?;
        ensure!(elsewhere.replace("p2", "px") == nowhere, "{elsewhere} / {nowhere}");
        expect(&n2, "GET", &format!("{WEB}/pods/p1"), None, 403).await?;
        let status = || Some(json!({"status": {"message": "seen by its node"}}));
        expect(&n1, "PATCH", &format!("{WEB}/pods/p1/status"), status(), 200).await?;
        expect(&n1, "PATCH", &format!("{WEB}/pods/p2/status"), status(), 403).await?;
        expect(&n1, "PATCH", &format!("{WEB}/pods/p1"), label(), 403).await?;
        expect(&n1, "POST", &format!("{WEB}/pods"), Some(pod("p9", Some("n1"))), 403).await?;
        let binding = json!({"metadata": {"name": "p0"}, "target": {"kind": "Node", "name": "n1"}});
        expect(&n1, "POST", &format!("{WEB}/pods/p0/binding"), Some(binding), 403).await?;
        expect(&n1, "DELETE", &format!("{WEB}/pods/p2"), None, 403).await?;
        // Events, in whatever tenant its pods live; nothing else there.
        let event = json!({"metadata": {"name": "p1.1"}, "involvedObject": {"kind": "Pod", "name": "p1",
                           "namespace": "web"}, "reason": "Started", "message": "started"});
        expect(&n1, "POST", &format!("{WEB}/events"), Some(event), 201).await?;
        expect(&n1, "DELETE", &format!("{WEB}/events/p1.1"), None, 403).await?;
        // Only the secrets its pods use, one by one.
        expect(&n1, "GET", &format!("{WEB}/secrets/s"), None, 200).await?;
        let unused = expect(&n1, "GET", &format!("{WEB}/secrets/t"), None, 403).await?;
        let missing = expect(&n1, "GET", &format!("{WEB}/secrets/u"), None, 403).await?;
        let unused = unused.replace(r#"\"t\""#, r#"\"u\""#).replace(r#""t""#, r#""u""#);
        ensure!(unused == missing, "{unused} / {missing}");
        expect(&n2, "GET", &format!("{WEB}/secrets/s"), None, 403).await?;
        expect(&n1, "GET", "/api/v1/tenants/acme/namespaces/default/secrets/s", None, 403).await?;
        expect(&n1, "PUT", &format!("{WEB}/secrets/s"), Some(json!({"metadata": {"name": "s"}})), 403).await?;
        expect(&n1, "GET", &format!("{WEB}/secrets"), None, 403).await?;
        expect(&n1, "GET", "/api/v1/namespaces/default/configmaps", None, 403).await?;
        expect(&n1, "GET", "/api/v1/tenants/acme/namespaces", None, 403).await?;
        expect(&n1, "GET", "/apis/atoll.io/v1/tenants", None, 403).await?;
        // As its agent does once the containers are gone.
        expect(&n1, "DELETE", &format!("{WEB}/pods/p1?gracePeriodSeconds=0"), None, 200).await?;

        // A tenant's certificate claiming a node's or the controllers' identity is just a
        // user of that tenant with no rights.
        expect(&fake_node, "GET", mine, None, 403).await?;
        expect(&fake_node, "GET", &format!("{WEB}/pods/p2"), None, 403).await?;
        expect(&fake_node, "GET", "/api/v1/nodes/n1", None, 403).await?;
        expect(&fake_controllers, "GET", "/api/v1/tenants/all/namespaces", None, 403).await?;
        expect(&fake_controllers, "GET", "/api/v1/namespaces", None, 403).await?;
        expect(&fake_controllers, "GET", "/api/v1/tenants/system/namespaces", None, 403).await?;

        // The scheduler reads nodes and pods and binds; it reads no secrets, writes no objects.
        expect(&scheduler, "GET", "/api/v1/nodes", None, 200).await?;
        expect(&scheduler, "GET", "/api/v1/tenants/all/pods", None, 200).await?;
        expect(&scheduler, "GET", &format!("{WEB}/secrets"), None, 403).await?;
        expect(&scheduler, "POST", &format!("{WEB}/configmaps"), Some(json!({"metadata": {"name": "x"}})), 403).await?;
        let binding = json!({"metadata": {"name": "p0"}, "target": {"kind": "Node", "name": "n2"}});
        expect(&scheduler, "POST", &format!("{WEB}/pods/p0/binding"), Some(binding), 201).await?;
        expect(&scheduler, "DELETE", &format!("{WEB}/pods/p0"), None, 403).await?;
        // The controllers read and delete everything (tenant and namespace cleanup), update
        // and patch everything (the garbage collector edits any object's ownerReferences
        // and finalizers, as Kubernetes' does), make namespaces, service accounts, pods,
        // ReplicaSets and the auth-controller's RBAC objects, and create no other objects.
        expect(&controllers, "GET", "/api/v1/tenants/all/secrets", None, 200).await?;
        expect(&controllers, "GET", "/tenants/acme/apis", None, 200).await?;
        expect(&controllers, "POST", &format!("{WEB}/secrets"), Some(json!({"metadata": {"name": "x"}})), 403).await?;
        expect(&controllers, "POST", &format!("{WEB}/configmaps"), Some(json!({"metadata": {"name": "x"}})), 403)
            .await?;
        expect(&controllers, "PATCH", &format!("{WEB}/secrets/s"), label(), 200).await?;
        expect(&controllers, "POST", &format!("{WEB}/serviceaccounts"), Some(json!({"metadata": {"name": "sa"}})), 201)
            .await?;
        let rb = json!({"metadata": {"name": "x"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole", "name": "cluster-admin"}, "subjects": []});
        expect(
            &controllers,
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/tenants/acme/clusterrolebindings",
            Some(rb),
            403,
        )
        .await?;
        Ok::<(), anyhow::Error>(())
    })?;

    // Through kubectl's eyes, with the node's kubeconfig.
    let node = Kubectl {
        bin: crate::server::kubectl_binary(33)?,
        kubeconfig: server.component_kubeconfig("node:n1")?,
        cache: tempfile::tempdir()?,
    };
    // Its own tenant's view (the system tenant's discovery; no other tenant's).
    let pods = node.ok(&["get", "pods", "-A", "--field-selector", "spec.nodeName=n1", "-o", "name"])?;
    ensure!(pods.trim() == "pod/p3", "{pods}");
    let refused = node.fails(&["get", "pods", "-A"])?;
    ensure!(refused.contains("Forbidden") || refused.contains("forbidden"), "{refused}");
    let everywhere = node.ok(&["get", "--raw", "/api/v1/tenants/all/pods?fieldSelector=spec.nodeName%3Dn1"])?;
    ensure!(everywhere.contains("\"p3\"") && !everywhere.contains("\"p2\""), "p1 is deleted, p3 is left: {everywhere}");
    let refused = node.fails(&["get", "--raw", "/api/v1/tenants/acme/namespaces/web/pods/p2"])?;
    ensure!(refused.contains("Forbidden") || refused.contains("forbidden"), "{refused}");
    ensure!(node.ok(&["auth", "can-i", "patch", "nodes/n1"])?.trim() == "yes");
    let other = node.run(&["auth", "can-i", "patch", "nodes/n2"], None)?;
    ensure!(String::from_utf8_lossy(&other.stdout).trim() == "no", "{other:?}");
    let refused = node.fails(&["get", "secrets", "-A"])?;
    ensure!(refused.contains("Forbidden") || refused.contains("forbidden"), "{refused}");
    Ok(())
}

#[test]
fn a_controllers_restart_in_the_middle_of_a_tenant_deletion_leaves_nothing_behind() -> Result<()> {
    let mut server = Server::start()?;
    let mut controllers = server.start_controllers()?;
    let admin_k = Kubectl::new(33, &server)?;
    admin_k.ok_with(&["create", "-f", "-"], Some(&tenant_json("doomed")))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let admin = caller("admin", &server.kubeconfig())?;
    const NAMESPACES: usize = 40;
    let started = Instant::now();
    rt.block_on(async {
        let t = "/tenants/doomed";
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gadgets.doomed.example.com"},
            "spec": {"group": "doomed.example.com", "scope": "Namespaced",
                     "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                     "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema":
                        {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
        expect(&admin, "POST", &format!("{t}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"), Some(crd), 201)
            .await?;
        let cr = json!({"metadata": {"name": "doomed-reader"}, "rules": []});
        expect(&admin, "POST", &format!("{t}/apis/rbac.authorization.k8s.io/v1/clusterroles"), Some(cr), 201).await?;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..NAMESPACES {
            let admin = admin.clone();
            set.spawn(async move {
                let ns = format!("ns-{i}");
                expect(&admin, "POST", &format!("{t}/api/v1/namespaces"), Some(json!({"metadata": {"name": ns}})), 201)
                    .await?;
                let base = format!("{t}/api/v1/namespaces/{ns}");
                for j in 0..5 {
                    let cm = json!({"metadata": {"name": format!("cm-{j}")}, "data": {"k": "v"}});
                    expect(&admin, "POST", &format!("{base}/configmaps"), Some(cm), 201).await?;
                }
                let secret = json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}});
                expect(&admin, "POST", &format!("{base}/secrets"), Some(secret), 201).await?;
                let gadget = json!({"apiVersion": "doomed.example.com/v1", "kind": "Gadget",
                                    "metadata": {"name": "g"}, "spec": {"n": i}});
                let gadgets = format!("{t}/apis/doomed.example.com/v1/namespaces/{ns}/gadgets");
                expect(&admin, "POST", &gadgets, Some(gadget), 201).await?;
                Ok::<(), anyhow::Error>(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    eprintln!("tenant doomed: {NAMESPACES} namespaces of objects made in {:?}", started.elapsed());

    admin_k.ok(&["delete", "tenant", "doomed", "--wait=false"])?;
    // Kill the controllers (SIGKILL, no clean stop) as soon as the deletion is under way.
    let doomed = format!("https://{}/tenants/doomed", server.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let out = admin_k.run(&["--server", &doomed, "get", "namespaces", "-o", "name"], None)?;
        let left = String::from_utf8_lossy(&out.stdout).lines().count();
        if out.status.success() && left < NAMESPACES {
            break left;
        }
        ensure!(Instant::now() < deadline, "the tenant's deletion did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    controllers.0.kill()?;
    controllers.0.wait()?;
    let tenant = admin_k.run(&["get", "tenant", "doomed", "-o", "name"], None)?;
    if !tenant.status.success() {
        bail!("the deletion finished before the controllers were killed: make the tenant bigger");
    }
    eprintln!("controllers killed with {left} of {NAMESPACES} namespaces left");

    let _controllers = server.start_controllers()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = admin_k.run(&["get", "tenant", "doomed", "-o", "name"], None)?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("NotFound") {
            break;
        }
        ensure!(Instant::now() < deadline, "the tenant is still there after a minute: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Not what the API shows: what the store holds.
    server.stop();
    let out = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["debug", "store-keys", "--dir"])
        .arg(server.dir.path().join("store"))
        .output()?;
    ensure!(out.status.success(), "atoll debug store-keys: {}", String::from_utf8_lossy(&out.stderr));
    let keys = String::from_utf8_lossy(&out.stdout);
    ensure!(keys.lines().any(|k| k.contains("/system/")), "the store listing holds the system tenant's keys");
    let leftovers: Vec<&str> = keys.lines().filter(|k| k.contains("doomed")).collect();
    ensure!(leftovers.is_empty(), "the store still holds the tenant's keys: {leftovers:?}");
    Ok(())
}
