//! `atoll controllers` as its own process beside `atoll server`, observed with the real
//! kubectl: default ServiceAccounts in new namespaces of the system tenant and of a new
//! tenant, a new Tenant's `default` namespace, repair after a deletion, namespaces and
//! tenants emptied before they go, reconnection after a server restart, clean SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::server::{Kubectl, Server, namespace_json, tenant_admins_json, tenant_json};

/// Waits until `args` fails with NotFound (the object is gone), 20 s at most.
fn eventually_gone(k: &Kubectl, args: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = k.run(args, None)?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && (err.contains("NotFound") || err.contains("not found")) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{args:?} still there: {}{err}", String::from_utf8_lossy(&out.stdout));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn controllers_create_default_service_accounts_and_tenant_namespaces() -> Result<()> {
    let mut server = Server::start()?;
    let mut controllers = server.start_controllers()?;
    let admin = Kubectl::new(33, &server)?;

    // System tenant: the namespaces the server made, and a new one.
    admin.eventually(&["get", "serviceaccount", "default", "-n", "kube-system"])?;
    admin.ok(&["create", "namespace", "team-a"])?;
    let sa =
        admin.eventually(&["get", "serviceaccount", "default", "-n", "team-a", "-o", "jsonpath={.metadata.tenant}"])?;
    ensure!(sa == "system", "the account is the system tenant's: {sa}");

    // A new tenant gets its default namespace (seen through the tenant prefix).
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["alice"])))?;
    let acme = format!("https://{}/tenants/acme", server.addr);
    let ns =
        admin.eventually(&["--server", &acme, "get", "namespace", "default", "-o", "jsonpath={.metadata.tenant}"])?;
    ensure!(ns == "acme", "the default namespace is acme's: {ns}");
    admin.eventually(&["--server", &acme, "get", "serviceaccount", "default", "-n", "default"])?;

    // A user of the new tenant makes a namespace and finds its default ServiceAccount.
    let alice = server.user("acme", "alice", 33)?;
    alice.ok(&["create", "namespace", "web"])?;
    let theirs =
        alice.eventually(&["get", "serviceaccount", "default", "-n", "web", "-o", "jsonpath={.metadata.tenant}"])?;
    ensure!(theirs == "acme", "{theirs}");

    // Deleted: made again, as a new object.
    let uid = alice.ok(&["get", "serviceaccount", "default", "-n", "web", "-o", "jsonpath={.metadata.uid}"])?;
    alice.ok(&["delete", "serviceaccount", "default", "-n", "web"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out =
            alice.run(&["get", "serviceaccount", "default", "-n", "web", "-o", "jsonpath={.metadata.uid}"], None)?;
        let new_uid = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && !new_uid.is_empty() && new_uid != uid {
            break;
        }
        ensure!(Instant::now() < deadline, "the deleted default ServiceAccount was not made again");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The API server dies and comes back on the same address: the controllers reconnect,
    // watch again from where they were, and act on what happens next.
    server.restart()?;
    admin.ok(&["create", "namespace", "after-restart"])?;
    admin.eventually(&["get", "serviceaccount", "default", "-n", "after-restart"])?;

    // SIGTERM stops the controllers cleanly.
    let pid = controllers.0.id().to_string();
    ensure!(Command::new("kill").args(["-TERM", &pid]).status()?.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = controllers.0.try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "the controllers did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut controllers.0.stderr.take().context("stderr")?, &mut log)?;
    ensure!(status.success(), "the controllers exited with {status}: {log}");
    Ok(())
}

#[test]
fn deleted_namespaces_and_tenants_are_emptied_before_they_go() -> Result<()> {
    let server = Server::start()?;
    let admin = Kubectl::new(33, &server)?;

    // Without the controllers a deleted namespace waits, Terminating, and takes nothing new.
    admin.ok(&["create", "namespace", "doomed"])?;
    admin.ok(&["create", "configmap", "c1", "-n", "doomed", "--from-literal=k=v"])?;
    admin.ok(&["delete", "namespace", "doomed", "--wait=false"])?;
    let phase = admin.ok(&["get", "namespace", "doomed", "-o", "jsonpath={.status.phase}{.spec.finalizers}"])?;
    ensure!(phase == "Terminating[\"kubernetes\"]", "a deleted namespace waits for its controller: {phase}");
    let refused = admin.fails(&["create", "configmap", "c2", "-n", "doomed"])?;
    ensure!(refused.contains("being terminated"), "{refused}");
    ensure!(admin.ok(&["get", "configmap", "c1", "-n", "doomed", "-o", "name"])?.contains("c1"));

    // The controllers empty it, then it goes.
    let _controllers = server.start_controllers()?;
    eventually_gone(&admin, &["get", "namespace", "doomed"])?;

    // A tenant with namespaces, objects and a custom resource definition of its own.
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["alice"])))?;
    let alice = server.user("acme", "alice", 33)?;
    alice.ok_with(&["create", "-f", "-"], Some(&namespace_json("team")))?;
    alice.ok(&["create", "configmap", "data", "-n", "team", "--from-literal=k=v"])?;
    let crd = serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gizmos.acme.example"}, "spec": {"group": "acme.example", "scope": "Namespaced",
        "names": {"plural": "gizmos", "kind": "Gizmo"}, "versions": [{"name": "v1", "served": true, "storage": true,
        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    alice.ok_with(&["create", "-f", "-"], Some(&crd.to_string()))?;
    let gizmo = serde_json::json!({"apiVersion": "acme.example/v1", "kind": "Gizmo",
        "metadata": {"name": "g", "namespace": "team"}});
    alice.ok_with(&["create", "-f", "-"], Some(&gizmo.to_string()))?;
    alice.eventually(&["get", "serviceaccount", "default", "-n", "team"])?;

    // Deleting the tenant deletes everything in it, then the tenant; the name is free again.
    admin.ok(&["delete", "tenant", "acme", "--wait=false"])?;
    // Nothing new goes into a terminating tenant, not even from an administrator (its
    // users lost their default bindings with the deletion).
    let prefix = format!("https://{}/tenants/acme", server.addr);
    let refused = admin.fails(&["--server", &prefix, "create", "configmap", "late", "-n", "team"])?;
    ensure!(refused.contains("being terminated"), "nothing new in a terminating tenant: {refused}");
    eventually_gone(&admin, &["get", "tenant", "acme"])?;
    // Nothing of it is left anywhere, its role bindings least of all (a tenant of the same
    // name later must not inherit them).
    for kind in ["clusterrolebindings", "clusterroles", "rolebindings", "roles"] {
        let all = admin.ok(&["get", "--raw", &format!("/apis/rbac.authorization.k8s.io/v1/tenants/all/{kind}")])?;
        ensure!(!all.contains("\"tenant\":\"acme\""), "{kind} of the deleted tenant remain: {all}");
    }
    for path in ["/api/v1/tenants/all/namespaces", "/api/v1/tenants/all/configmaps"] {
        let all = admin.ok(&["get", "--raw", path])?;
        ensure!(!all.contains("\"tenant\":\"acme\""), "{path} of the deleted tenant remain: {all}");
    }
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_json("acme")))?;
    let left = admin.ok(&["--server", &prefix, "get", "configmaps,crds", "-A", "-o", "name"])?;
    ensure!(left.trim().is_empty(), "a recreated tenant starts empty: {left}");
    let namespaces = admin.eventually(&["--server", &prefix, "get", "namespaces", "-o", "name"])?;
    ensure!(!namespaces.contains("team"), "the old tenant's namespaces are gone: {namespaces}");
    // The system tenant's objects were never touched.
    ensure!(admin.ok(&["get", "namespace", "default", "-o", "name"])?.contains("default"));
    Ok(())
}
