//! Tenancy-aware RBAC driven by the real kubectl: users of a tenant without bindings are
//! refused, Roles and bindings grant exactly what they say, a tenant's ClusterRoleBindings
//! never reach another tenant, privilege escalation is refused, and `kubectl auth`
//! (`can-i`, `can-i --list`, `whoami`) answers.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::server::{Kubectl, Server, kubectl_binary, namespace_json, tenant_admins_json};

/// A kubectl of `minor` for `user` of `tenant`, with a certificate from `atoll admin kubeconfig`.
pub(crate) fn user_kubectl(server: &Server, tenant: &str, user: &str, minor: u32) -> Result<Kubectl> {
    let config = server.dir.path().join(format!("{user}-{tenant}-{minor}.kubeconfig"));
    let status = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["admin", "kubeconfig", "--tenant", tenant, "--user", user, "--data-dir"])
        .arg(server.dir.path())
        .arg("--output")
        .arg(&config)
        .status()?;
    ensure!(status.success(), "atoll admin kubeconfig failed");
    Ok(Kubectl { bin: kubectl_binary(minor)?, kubeconfig: config, cache: tempfile::tempdir()? })
}

/// `kubectl auth can-i ...`: true for "yes", false for "no" (kubectl exits 1 then).
fn can_i(k: &Kubectl, args: &[&str]) -> Result<bool> {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let out = k.run(&all, None)?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(answer == "yes" || answer == "no", "can-i {args:?}: {answer} {}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() == (answer == "yes"), "can-i's exit status follows its answer");
    Ok(answer == "yes")
}

fn wait_until(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check()? {
        ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn rbac_decides_inside_each_tenant() -> Result<()> {
    let server = Server::start()?;
    let root = Kubectl::new(33, &server)?;
    root.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["ann"])))?;
    root.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("globex", &["gus"])))?;
    let ann = user_kubectl(&server, "acme", "ann", 33)?;
    let bob = user_kubectl(&server, "acme", "bob", 33)?;
    let gus = user_kubectl(&server, "globex", "gus", 33)?;
    ann.ok_with(&["create", "-f", "-"], Some(&namespace_json("team")))?;
    ann.ok(&["create", "configmap", "settings", "-n", "team", "--from-literal=k=v"])?;

    // Bob has no bindings: discovery works, everything else is refused, in Kubernetes' words.
    ensure!(bob.ok(&["api-resources", "-o", "name"])?.contains("rolebindings.rbac.authorization.k8s.io"));
    let refused = bob.fails(&["get", "configmaps", "-n", "team"])?;
    ensure!(
        refused.contains(
            "configmaps is forbidden: User \"bob\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"team\""
        ),
        "{refused}"
    );
    let refused = bob.fails(&["get", "namespaces"])?;
    ensure!(
        refused.contains("cannot list resource \"namespaces\" in API group \"\" at the cluster scope"),
        "{refused}"
    );
    ensure!(!can_i(&bob, &["list", "configmaps", "-n", "team"])?);
    ensure!(can_i(&ann, &["list", "configmaps", "-n", "team"])?, "a tenant admin may");

    // A Role and a RoleBinding grant exactly that.
    ann.ok(&["create", "role", "cm-reader", "-n", "team", "--verb=get,list", "--resource=configmaps"])?;
    ann.ok(&["create", "rolebinding", "bob-reads", "-n", "team", "--role=cm-reader", "--user=bob"])?;
    ensure!(bob.ok(&["get", "configmaps", "-n", "team", "-o", "name"])?.trim() == "configmap/settings");
    ensure!(bob.fails(&["create", "configmap", "x", "-n", "team"])?.contains("cannot create resource \"configmaps\""));
    ensure!(bob.fails(&["get", "secrets", "-n", "team"])?.contains("cannot list resource \"secrets\""));
    ann.ok_with(&["create", "-f", "-"], Some(&namespace_json("other")))?;
    ensure!(bob.fails(&["get", "configmaps", "-n", "other"])?.contains("in the namespace \"other\""));
    ensure!(can_i(&bob, &["get", "configmaps", "-n", "team"])?);
    ensure!(can_i(&bob, &["get", "configmaps/settings", "-n", "team"])?);
    ensure!(!can_i(&bob, &["delete", "configmaps", "-n", "team"])?);
    ensure!(!can_i(&bob, &["get", "configmaps", "-n", "other"])?);
    let list = bob.ok(&["auth", "can-i", "--list", "-n", "team"])?;
    let configmaps = list.lines().find(|l| l.starts_with("configmaps ")).unwrap_or("");
    ensure!(configmaps.contains("[get list]"), "can-i --list shows the role's rule: {list}");
    ensure!(list.contains("selfsubjectaccessreviews.authorization.k8s.io"), "and the basic user's: {list}");
    let table = ann.ok(&["get", "rolebindings", "-n", "team", "-o", "wide"])?;
    ensure!(table.contains("Role/cm-reader") && table.contains("bob"), "rolebinding columns: {table}");

    // resourceNames: one object only.
    ann.ok(&[
        "create",
        "role",
        "one-secret",
        "-n",
        "team",
        "--verb=get",
        "--resource=secrets",
        "--resource-name=public",
    ])?;
    ann.ok(&["create", "rolebinding", "bob-one-secret", "-n", "team", "--role=one-secret", "--user=bob"])?;
    ensure!(can_i(&bob, &["get", "secrets/public", "-n", "team"])?);
    ensure!(!can_i(&bob, &["get", "secrets/private", "-n", "team"])?);
    ensure!(!can_i(&bob, &["list", "secrets", "-n", "team"])?);

    // Escalation: Bob may manage roles and bindings in team, but grant only what he holds.
    ann.ok(&[
        "create",
        "role",
        "rbac-manager",
        "-n",
        "team",
        "--verb=create,get,list",
        "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io",
    ])?;
    ann.ok(&["create", "rolebinding", "bob-manages", "-n", "team", "--role=rbac-manager", "--user=bob"])?;
    let escalation = bob.fails(&["create", "role", "secrets", "-n", "team", "--verb=get", "--resource=secrets"])?;
    ensure!(
        escalation.contains("is forbidden: user \"bob\"")
            && escalation.contains("is attempting to grant RBAC permissions not currently held"),
        "{escalation}"
    );
    bob.ok(&["create", "role", "cm-getter", "-n", "team", "--verb=get", "--resource=configmaps"])?;
    let bind = bob.fails(&["create", "rolebinding", "bob-admin", "-n", "team", "--clusterrole=admin", "--user=bob"])?;
    ensure!(bind.contains("not currently held"), "binding a role one does not hold: {bind}");
    bob.ok(&["create", "rolebinding", "carol-reads", "-n", "team", "--role=cm-reader", "--user=carol"])?;
    // With `escalate` on roles, Bob may grant what he does not hold.
    ann.ok(&[
        "create",
        "role",
        "escalator",
        "-n",
        "team",
        "--verb=escalate",
        "--resource=roles.rbac.authorization.k8s.io",
    ])?;
    ann.ok(&["create", "rolebinding", "bob-escalates", "-n", "team", "--role=escalator", "--user=bob"])?;
    bob.ok(&["create", "role", "secrets", "-n", "team", "--verb=get", "--resource=secrets"])?;
    // Ann may `bind` any role, so she may hand out admin without being refused.
    ann.ok(&["create", "rolebinding", "carol-admin", "-n", "team", "--clusterrole=admin", "--user=carol"])?;

    // A server-side apply that creates an object needs `create`, not only `patch`.
    ann.ok(&["create", "role", "cm-patcher", "-n", "team", "--verb=patch", "--resource=configmaps"])?;
    ann.ok(&["create", "rolebinding", "bob-patches", "-n", "team", "--role=cm-patcher", "--user=bob"])?;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "namespace": "team"},
                    "data": {"k": "v"}});
    let apply = bob.run(&["apply", "--server-side", "-f", "-"], Some(&cm.to_string()))?;
    let apply_err = String::from_utf8_lossy(&apply.stderr);
    ensure!(
        !apply.status.success() && apply_err.contains("cannot create resource \"configmaps\""),
        "apply-create without create: {apply_err}"
    );
    ann.ok_with(&["apply", "--server-side", "-f", "-"], Some(&cm.to_string()))?;
    let changed = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "namespace": "team"},
                         "data": {"k": "changed"}});
    bob.ok_with(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&changed.to_string()))?;

    // A ClusterRoleBinding of globex reaches only globex: gus binds cluster-admin to "bob"
    // in globex, and acme's bob gains nothing.
    gus.ok(&["create", "clusterrolebinding", "bob-everything", "--clusterrole=cluster-admin", "--user=bob"])?;
    ensure!(!can_i(&bob, &["list", "namespaces"])?, "another tenant's binding never applies");
    ensure!(bob.fails(&["get", "namespaces"])?.contains("forbidden"));
    // And acme's own ClusterRoleBinding reaches every namespace of acme, and nothing else.
    ann.ok(&["create", "clusterrolebinding", "bob-views", "--clusterrole=view", "--user=bob"])?;
    ensure!(bob.ok(&["get", "namespaces", "-o", "name"])?.contains("namespace/other"));
    ensure!(can_i(&bob, &["list", "pods", "-n", "other"])?);
    let prefix = format!("https://{}/tenants/globex", server.addr);
    let cross = bob.fails(&["--server", &prefix, "get", "namespaces"])?;
    ensure!(cross.contains("Forbidden") || cross.contains("forbidden"), "{cross}");
    let cross = ann.fails(&["get", "--raw", "/api/v1/tenants/globex/namespaces"])?;
    ensure!(!cross.contains("NotFound") && !cross.contains("gus"), "nothing about globex leaks: {cross}");
    ensure!(
        !gus.ok(&["get", "clusterrolebindings", "-o", "name"])?.contains("bob-views"),
        "tenants see their own bindings only"
    );

    // SubjectAccessReview: a tenant admin asks about Bob, within acme.
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "bob", "resourceAttributes": {"verb": "get", "resource": "configmaps", "namespace": "team"}}});
    let answer: Value =
        serde_json::from_str(&ann.ok_with(&["create", "-o", "json", "-f", "-"], Some(&sar.to_string()))?)?;
    ensure!(answer["status"]["allowed"] == json!(true), "{answer}");
    let out = bob.run(&["create", "-o", "json", "-f", "-"], Some(&sar.to_string()))?;
    ensure!(!out.status.success(), "a user without the right cannot review others");

    // A system administrator reviews a subject in the tenant named by the URL; the
    // subject's own tenant (`extra`) must be that one.
    let sar_ann = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "ann", "extra": {"atoll.io/tenant": ["acme"]},
                 "resourceAttributes": {"verb": "delete", "resource": "namespaces"}}});
    let acme = format!("https://{}/tenants/acme", server.addr);
    let in_acme = root.ok_with(&["--server", &acme, "create", "-o", "json", "-f", "-"], Some(&sar_ann.to_string()))?;
    ensure!(serde_json::from_str::<Value>(&in_acme)?["status"]["allowed"] == json!(true), "{in_acme}");
    let in_system = root.ok_with(&["create", "-o", "json", "-f", "-"], Some(&sar_ann.to_string()))?;
    ensure!(serde_json::from_str::<Value>(&in_system)?["status"]["allowed"] == json!(false), "{in_system}");

    // Aggregation: a ClusterRole labelled for `view` joins acme's view, and only acme's.
    let extra = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "lease-reader", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"verbs": ["get"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}]});
    ann.ok_with(&["create", "-f", "-"], Some(&extra.to_string()))?;
    wait_until("acme's view aggregates lease-reader", || {
        Ok(ann.ok(&["get", "clusterrole", "view", "-o", "json"])?.contains("leases"))
    })?;
    wait_until("acme's admin aggregates it through edit", || {
        Ok(ann.ok(&["get", "clusterrole", "admin", "-o", "json"])?.contains("leases"))
    })?;
    ensure!(can_i(&bob, &["get", "leases", "-n", "team"])?, "bob views through acme's aggregated view");
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        !root.ok(&["get", "clusterrole", "view", "-o", "json"])?.contains("leases"),
        "the system's view is untouched"
    );
    ensure!(!gus.ok(&["get", "clusterrole", "view", "-o", "json"])?.contains("leases"), "globex's view is untouched");

    // Tenant administrators follow Tenant.spec.admins.
    ensure!(!can_i(&bob, &["create", "namespaces"])?);
    root.ok(&["patch", "tenant", "acme", "--type=merge", "-p", "{\"spec\":{\"admins\":[\"ann\",\"bob\"]}}"])?;
    ensure!(can_i(&bob, &["create", "namespaces"])?, "bob became an administrator of acme");
    Ok(())
}

fn kubectl_auth_answers_with(minor: u32) -> Result<()> {
    let server = Server::start()?;
    let root = Kubectl::new(minor, &server)?;
    root.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["ann"])))?;
    let bob = user_kubectl(&server, "acme", "bob", minor)?;
    let ann = user_kubectl(&server, "acme", "ann", minor)?;
    let who = bob.ok(&["auth", "whoami", "-o", "json"])?;
    let who: Value = serde_json::from_str(&who)?;
    ensure!(who["status"]["userInfo"]["username"] == "bob", "{who}");
    ensure!(who["status"]["userInfo"]["extra"]["atoll.io/tenant"] == json!(["acme"]), "{who}");
    ensure!(bob.ok(&["auth", "whoami"])?.contains("atoll.io/tenant"), "whoami's table shows the tenant");
    ensure!(can_i(&root, &["create", "pods", "--all-namespaces"])?, "system:masters may do anything");
    ensure!(can_i(&ann, &["delete", "pods", "-n", "x"])?);
    ensure!(!can_i(&bob, &["get", "pods", "-n", "x"])?);
    ensure!(can_i(&bob, &["get", "/api"])?, "discovery is open to every authenticated user");
    ensure!(!can_i(&bob, &["get", "/metrics"])?);
    let list = ann.ok(&["auth", "can-i", "--list"])?;
    ensure!(list.lines().any(|l| l.starts_with("*.* ") && l.contains("[*]")), "cluster-admin's rules: {list}");
    let list = bob.ok(&["auth", "can-i", "--list"])?;
    ensure!(!list.contains("*.*") && list.contains("[/api/*]"), "a plain user's rules: {list}");
    Ok(())
}

#[test]
fn kubectl_1_27_auth_answers() -> Result<()> {
    kubectl_auth_answers_with(27)
}

#[test]
fn kubectl_1_30_auth_answers() -> Result<()> {
    kubectl_auth_answers_with(30)
}

#[test]
fn kubectl_1_33_auth_answers() -> Result<()> {
    kubectl_auth_answers_with(33)
}

/// The index is rebuilt from the store: after a restart, bindings still decide, and a
/// deleted default role comes back.
#[test]
fn rbac_survives_a_restart() -> Result<()> {
    let mut server = Server::start()?;
    let root = Kubectl::new(33, &server)?;
    root.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["ann"])))?;
    let ann = user_kubectl(&server, "acme", "ann", 33)?;
    ann.ok_with(&["create", "-f", "-"], Some(&namespace_json("team")))?;
    ann.ok(&["create", "rolebinding", "bob-views", "-n", "team", "--clusterrole=view", "--user=bob"])?;
    ann.ok(&["delete", "clusterrole", "edit"])?;
    server.restart()?;
    let bob = user_kubectl(&server, "acme", "bob", 33)?;
    let ann = user_kubectl(&server, "acme", "ann", 33)?;
    ensure!(can_i(&bob, &["list", "pods", "-n", "team"])?, "bob's binding survives");
    ensure!(!can_i(&bob, &["list", "pods", "-n", "other"])?);
    ensure!(can_i(&ann, &["delete", "namespaces"])?, "ann is still acme's administrator");
    ensure!(ann.ok(&["get", "clusterrole", "edit", "-o", "name"])?.contains("edit"), "the default is back");
    Ok(())
}
