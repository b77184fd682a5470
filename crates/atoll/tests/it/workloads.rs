//! Workloads end to end with the real kubectl 1.27, 1.30 and 1.33 as tenant users:
//! Deployments rolled out on real pods in the all-in-one cluster (`create deployment`,
//! `scale`, `rollout status|history|undo|restart`, `set image`), and the garbage
//! collector (background, foreground and orphan deletion, a custom resource owning a
//! ConfigMap, owner references that name another tenant's or namespace's objects).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::server::{
    Kubectl, Proc, Server, kubectl_binary, namespace_json, own_network, start_up, stop_with_network, tenant_admins_json,
};

/// Waits until `check` holds for `args`' output, 60 s at most.
fn until(k: &Kubectl, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = k.run(args, None)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && check(&text) {
            return Ok(text);
        }
        ensure!(Instant::now() < deadline, "{what}: {args:?} gave {text}{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn items(k: &Kubectl, args: &[&str]) -> Result<Vec<Value>> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let list: Value = serde_json::from_str(&k.ok(&all)?)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn uid(k: &Kubectl, args: &[&str]) -> Result<String> {
    let mut all = args.to_vec();
    all.extend(["-o", "jsonpath={.metadata.uid}"]);
    let uid = k.ok(&all)?;
    ensure!(!uid.is_empty(), "no uid for {args:?}");
    Ok(uid)
}

fn configmap_owned(name: &str, ns: &str, owners: Value) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, "ownerReferences": owners}})
        .to_string()
}

fn cm_ref(name: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": uid, "blockOwnerDeletion": true})
}

/// Deleting a Deployment in the background, in the foreground and orphaning, as a tenant
/// user with each kubectl; no node runs the pods (they need not run to be collected).
#[test]
fn garbage_collector_follows_owner_references_within_a_tenant() -> Result<()> {
    let server = Server::start()?;
    let _controllers = server.start_controllers()?;
    let admin = Kubectl::new(33, &server)?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["alice"])))?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("other", &["bob"])))?;

    for (minor, cascade) in [(27, "background"), (30, "foreground"), (33, "orphan")] {
        let alice = server.user("acme", "alice", minor)?;
        let ns = format!("gc-{minor}");
        alice.eventually(&["create", "namespace", &ns])?;
        alice.ok(&["create", "deployment", "web", "--image=busybox:v1", "-n", &ns, "--", "sleep", "3600"])?;
        alice.ok(&["scale", "deployment", "web", "--replicas=2", "-n", &ns])?;
        until(&alice, &["get", "pods", "-n", &ns, "-o", "name"], "two pods", |o| o.lines().count() == 2)?;
        let rs = items(&alice, &["get", "replicasets", "-n", &ns])?;
        ensure!(rs.len() == 1, "one ReplicaSet: {rs:?}");
        let rs_name = rs[0]["metadata"]["name"].as_str().unwrap_or("").to_string();
        let hash = rs[0]["metadata"]["labels"]["pod-template-hash"].as_str().unwrap_or("");
        ensure!(rs_name == format!("web-{hash}"), "named <deployment>-<hash>: {rs_name}");
        let pods = items(&alice, &["get", "pods", "-n", &ns])?;
        for p in &pods {
            let name = p["metadata"]["name"].as_str().unwrap_or("");
            ensure!(name.starts_with(&format!("{rs_name}-")) && name.len() == rs_name.len() + 6, "pod name {name}");
            ensure!(p["metadata"]["ownerReferences"][0]["name"] == json!(rs_name), "{p}");
            // The controllers introduce themselves: their writes are recorded under their name.
            let shown = alice.ok(&["get", "pod", name, "-n", &ns, "-o", "json", "--show-managed-fields"])?;
            let creator = serde_json::from_str::<Value>(&shown)?["metadata"]["managedFields"][0].clone();
            ensure!(creator["manager"] == "atoll-controllers" && creator["operation"] == "Update", "{creator}");
        }
        alice.ok(&["delete", "deployment", "web", "-n", &ns, &format!("--cascade={cascade}"), "--timeout=60s"])?;
        if cascade == "orphan" {
            // The ReplicaSet stays, without an owner, and keeps its pods.
            let left = until(&alice, &["get", "rs", &rs_name, "-n", &ns, "-o", "json"], "orphaned", |o| {
                serde_json::from_str::<Value>(o).is_ok_and(|rs| rs["metadata"].get("ownerReferences").is_none())
            })?;
            ensure!(!left.contains("deletionTimestamp"), "{left}");
            std::thread::sleep(Duration::from_secs(2));
            ensure!(items(&alice, &["get", "pods", "-n", &ns])?.len() == 2, "the orphaned set's pods stay");
            alice.fails(&["get", "deployment", "web", "-n", &ns])?;
        } else {
            until(&alice, &["get", "rs,pods", "-n", &ns, "-o", "name"], "dependents collected", str::is_empty)?;
        }
    }

    // A custom resource (the tenant's own kind) owning a ConfigMap.
    let alice = server.user("acme", "alice", 33)?;
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    });
    alice.ok_with(&["create", "-f", "-"], Some(&crd.to_string()))?;
    alice.ok_with(&["create", "-f", "-"], Some(&namespace_json("crs")))?;
    let gadget =
        json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g1", "namespace": "crs"}});
    let gadget_uid = loop {
        // The kind is served as soon as its definition is written; retry for discovery caches.
        if alice.run(&["create", "-f", "-"], Some(&gadget.to_string()))?.status.success() {
            break uid(&alice, &["get", "gadget", "g1", "-n", "crs"])?;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let owned = configmap_owned(
        "of-g1",
        "crs",
        json!([{"apiVersion": "example.com/v1", "kind": "Gadget", "name": "g1", "uid": gadget_uid}]),
    );
    alice.ok_with(&["create", "-f", "-"], Some(&owned))?;
    std::thread::sleep(Duration::from_secs(1));
    alice.ok(&["get", "configmap", "of-g1", "-n", "crs"])?;
    alice.ok(&["delete", "gadget", "g1", "-n", "crs"])?;
    until(&alice, &["get", "configmaps", "-n", "crs", "-o", "name"], "the gadget's ConfigMap goes", |o| {
        !o.contains("of-g1")
    })?;

    // An owner deleted and made again under its name is another owner: the dependent goes.
    alice.ok(&["create", "configmap", "phoenix", "-n", "crs"])?;
    let first = uid(&alice, &["get", "configmap", "phoenix", "-n", "crs"])?;
    alice.ok(&["delete", "configmap", "phoenix", "-n", "crs", "--cascade=orphan"])?;
    alice.ok(&["create", "configmap", "phoenix", "-n", "crs"])?;
    alice.ok_with(
        &["create", "-f", "-"],
        Some(&configmap_owned("of-phoenix", "crs", json!([cm_ref("phoenix", &first)]))),
    )?;
    until(&alice, &["get", "configmaps", "-n", "crs", "-o", "name"], "owner by uid, not by name", |o| {
        !o.contains("of-phoenix") && o.contains("configmap/phoenix")
    })?;

    // References into another tenant or namespace reach nothing there.
    let bob = server.user("other", "bob", 33)?;
    bob.eventually(&["create", "namespace", "shared"])?;
    bob.ok(&["create", "configmap", "owner", "-n", "shared"])?;
    let bob_owner = uid(&bob, &["get", "configmap", "owner", "-n", "shared"])?;
    bob.ok_with(
        &["create", "-f", "-"],
        Some(&configmap_owned("bob-dep", "shared", json!([cm_ref("owner", &bob_owner)]))),
    )?;
    alice.ok_with(&["create", "-f", "-"], Some(&namespace_json("shared")))?;
    alice.ok_with(&["create", "-f", "-"], Some(&namespace_json("elsewhere")))?;
    alice.ok(&["create", "configmap", "anchor", "-n", "shared"])?;
    alice.ok(&["create", "configmap", "anchor", "-n", "elsewhere"])?;
    let anchor = uid(&alice, &["get", "configmap", "anchor", "-n", "shared"])?;
    let anchor_elsewhere = uid(&alice, &["get", "configmap", "anchor", "-n", "elsewhere"])?;
    // Owned by its own anchor and, by uid, by bob's object in the other tenant.
    let cross_tenant =
        configmap_owned("dep", "shared", json!([cm_ref("anchor", &anchor), cm_ref("owner", &bob_owner)]));
    alice.ok_with(&["create", "-f", "-"], Some(&cross_tenant))?;
    // Owned by the anchor of its namespace and, by uid, by the one in another namespace.
    let cross_ns =
        configmap_owned("dep", "elsewhere", json!([cm_ref("anchor", &anchor_elsewhere), cm_ref("anchor", &anchor)]));
    alice.ok_with(&["create", "-f", "-"], Some(&cross_ns))?;
    // The references that resolve to nothing in the dependent's tenant and namespace go.
    for ns in ["shared", "elsewhere"] {
        until(&alice, &["get", "configmap", "dep", "-n", ns, "-o", "json"], "dangling reference dropped", |o| {
            serde_json::from_str::<Value>(o)
                .is_ok_and(|cm| cm["metadata"]["ownerReferences"].as_array().map(Vec::len) == Some(1))
        })?;
    }
    // Bob deletes his owner in the foreground: his dependent goes first, alice's stays.
    bob.ok(&["delete", "configmap", "owner", "-n", "shared", "--cascade=foreground", "--timeout=60s"])?;
    bob.fails(&["get", "configmap", "bob-dep", "-n", "shared"])?;
    // Alice deletes the anchor in "shared": its dependent there goes, not the one elsewhere.
    alice.ok(&["delete", "configmap", "anchor", "-n", "shared", "--cascade=foreground", "--timeout=60s"])?;
    alice.fails(&["get", "configmap", "dep", "-n", "shared"])?;
    std::thread::sleep(Duration::from_secs(1));
    alice.ok(&["get", "configmap", "dep", "-n", "elsewhere"])?;
    alice.ok(&["get", "configmap", "anchor", "-n", "elsewhere"])?;
    Ok(())
}

/// Kubernetes' OwnerReferencesPermissionEnforcement: newly setting `blockOwnerDeletion`
/// needs `update` on the owner's `finalizers`; a tenant user without it gets a 403, one
/// with it does not, and edits that leave a blocking reference as it was are not checked.
#[test]
fn block_owner_deletion_needs_permission_to_set_finalizers() -> Result<()> {
    let server = Server::start()?;
    let admin = Kubectl::new(33, &server)?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["alice"])))?;
    let alice = server.user("acme", "alice", 33)?;
    alice.eventually(&["create", "namespace", "owners"])?;
    fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [args, &["-n", "owners"]].concat()
    }
    alice.ok(&with(&[
        "create",
        "role",
        "cm-writer",
        "--verb=get,list,create,update,patch,delete",
        "--resource=configmaps",
    ]))?;
    alice.ok(&with(&["create", "role", "cm-finalizers", "--verb=update", "--resource=configmaps/finalizers"]))?;
    alice.ok(&with(&["create", "rolebinding", "writers", "--role=cm-writer", "--user=carol", "--user=dave"]))?;
    alice.ok(&with(&["create", "rolebinding", "finalizers", "--role=cm-finalizers", "--user=dave"]))?;
    alice.ok(&with(&["create", "configmap", "owner"]))?;
    let owner = uid(&alice, &with(&["get", "configmap", "owner"]))?;
    let blocking = json!([cm_ref("owner", &owner)]);
    let mut quiet = blocking.clone();
    quiet[0]["blockOwnerDeletion"] = json!(false);

    for minor in [27, 33] {
        let carol = server.user("acme", "carol", minor)?;
        let dave = server.user("acme", "dave", minor)?;
        let (c, d) = (format!("carol-{minor}"), format!("dave-{minor}"));
        // A create: refused without the permission, with Kubernetes' words.
        let out = carol.run(&["create", "-f", "-"], Some(&configmap_owned(&c, "owners", blocking.clone())))?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "carol set blockOwnerDeletion without the permission");
        ensure!(
            err.contains("Forbidden")
                && err.contains("cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on")
                && err.contains("configmaps/finalizers"),
            "{err}"
        );
        // Without blocking: fine; then turning it on with a patch: refused.
        carol.ok_with(&["create", "-f", "-"], Some(&configmap_owned(&c, "owners", quiet.clone())))?;
        let patch = r#"[{"op":"replace","path":"/metadata/ownerReferences/0/blockOwnerDeletion","value":true}]"#;
        let err = carol.fails(&with(&["patch", "configmap", &c, "--type=json", "-p", patch]))?;
        ensure!(err.contains("cannot set blockOwnerDeletion"), "{err}");
        // Dave may: create, and a patch that turns it on.
        dave.ok_with(&["create", "-f", "-"], Some(&configmap_owned(&d, "owners", blocking.clone())))?;
        dave.ok(&with(&["patch", "configmap", &c, "--type=json", "-p", patch]))?;
        // Carol may edit what already blocks, leaving the reference as it is.
        carol.ok(&with(&["label", "configmap", &d, "edited=yes"]))?;
        carol.ok(&with(&["annotate", "configmap", &c, "edited=yes"]))?;
    }
    // A reference to a kind nobody serves cannot block.
    let ghost =
        json!([{"apiVersion": "example.com/v1", "kind": "Ghost", "name": "g", "uid": "u", "blockOwnerDeletion": true}]);
    let out = alice.run(&["create", "-f", "-"], Some(&configmap_owned("ghosted", "owners", ghost)))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("cannot find RESTMapping"), "{err}");
    Ok(())
}

/// `atoll up` with its node agent and its own bridge; returns it and the kubeconfig of
/// `alice`, an administrator of tenant `acme`.
fn up_with_node(dir: &Path, node: &str, bridge: &str, cidr: &str) -> Result<Proc> {
    // Two tags, the second for `kubectl set image`. Tagged, because a pod of an untagged
    // (latest) image defaults to imagePullPolicy Always, as in Kubernetes, and this
    // machine reaches no registry.
    for tag in ["busybox:v1", "busybox:v2"] {
        let built = Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["image", "build-busybox", "--name", tag, "--data-dir"])
            .arg(dir)
            .output()?;
        ensure!(built.status.success(), "atoll image build-busybox {tag}: {}", String::from_utf8_lossy(&built.stderr));
    }
    start_up(dir, &["--node-name", node, "--bridge", bridge, "--pod-cidr", cidr])
}

fn images_of_ready_pods(k: &Kubectl, ns: &str, app: &str) -> Result<Vec<String>> {
    Ok(items(k, &["get", "pods", "-n", ns, "-l", &format!("app={app}")])?
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap_or("").to_string())
        .collect())
}

fn roll_out_with(k: &Kubectl, ns: &str, minor: u32) -> Result<()> {
    let name = format!("web-{minor}");
    let deploy = format!("deployment/{name}");
    let status = |k: &Kubectl| k.ok(&["rollout", "status", &deploy, "-n", ns, "--timeout=120s"]);
    // A command that ends at once on SIGTERM, so old pods go quickly.
    k.ok(&[
        "create",
        "deployment",
        &name,
        "--image=busybox:v1",
        "-n",
        ns,
        "--",
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ])?;
    k.ok(&["scale", &deploy, "--replicas=3", "-n", ns])?;
    let out = status(k)?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    let ready =
        k.ok(&["get", &deploy, "-n", ns, "-o", "jsonpath={.status.readyReplicas}/{.status.availableReplicas}"])?;
    ensure!(ready == "3/3", "{ready}");
    // A new image: a second ReplicaSet takes over.
    k.ok(&["set", "image", &deploy, "busybox=busybox:v2", "-n", ns])?;
    let out = status(k)?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    let images =
        until(k, &["get", "pods", "-n", ns, "-l", &format!("app={name}"), "-o", "name"], "old pods gone", |o| {
            o.lines().count() == 3
        });
    images?;
    ensure!(images_of_ready_pods(k, ns, &name)? == ["busybox:v2"; 3], "{:?}", images_of_ready_pods(k, ns, &name)?);
    let history = k.ok(&["rollout", "history", &deploy, "-n", ns])?;
    ensure!(history.contains('1') && history.contains('2'), "{history}");
    let revision = k.ok(&[
        "get",
        &deploy,
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ])?;
    ensure!(revision == "2", "revision {revision}");
    // Back to the first template (kubectl patches it from the old ReplicaSet).
    k.ok(&["rollout", "undo", &deploy, "-n", ns])?;
    let out = status(k)?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    until(k, &["get", "pods", "-n", ns, "-l", &format!("app={name}"), "-o", "name"], "undone", |o| {
        o.lines().count() == 3
    })?;
    ensure!(images_of_ready_pods(k, ns, &name)? == ["busybox:v1"; 3], "{:?}", images_of_ready_pods(k, ns, &name)?);
    let sets = items(k, &["get", "rs", "-n", ns, "-l", &format!("app={name}")])?;
    ensure!(sets.len() == 2, "undo reuses the first ReplicaSet: {sets:?}");
    let revision = k.ok(&[
        "get",
        &deploy,
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ])?;
    ensure!(revision == "3", "revision after undo {revision}");
    // A restart: same image, new pods.
    let before: Vec<String> = items(k, &["get", "pods", "-n", ns, "-l", &format!("app={name}")])?
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    k.ok(&["rollout", "restart", &deploy, "-n", ns])?;
    let out = status(k)?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    let after = until(k, &["get", "pods", "-n", ns, "-l", &format!("app={name}"), "-o", "name"], "restarted", |o| {
        o.lines().count() == 3 && before.iter().all(|b| !o.contains(b.as_str()))
    })?;
    ensure!(after.lines().count() == 3);
    let restarted = k.ok(&["get", &deploy, "-n", ns, "-o", "jsonpath={.spec.template.metadata.annotations}"])?;
    ensure!(restarted.contains("kubectl.kubernetes.io/restartedAt"), "{restarted}");
    // Scale down to one: the others go.
    k.ok(&["scale", &deploy, "--replicas=1", "-n", ns])?;
    status(k)?;
    until(k, &["get", "pods", "-n", ns, "-l", &format!("app={name}"), "-o", "name"], "scaled down", |o| {
        o.lines().count() == 1
    })?;
    // Deleting the Deployment takes its ReplicaSets and pods.
    k.ok(&["delete", &deploy, "-n", ns, "--timeout=60s"])?;
    until(k, &["get", "rs,pods", "-n", ns, "-l", &format!("app={name}"), "-o", "name"], "all gone", str::is_empty)?;
    Ok(())
}

/// Whether a watch of a Deployment's pods (`kubectl get -w --output-watch-events -o json`)
/// ever saw a pod made beside a live pod of another image; returns the problem or the
/// number of pods made and deleted.
fn recreate_order(watch: &str) -> Result<(usize, usize)> {
    let mut live: std::collections::BTreeMap<String, String> = Default::default();
    let (mut made, mut deleted) = (0, 0);
    for event in serde_json::Deserializer::from_str(watch).into_iter::<Value>() {
        let event = event?;
        let pod = &event["object"];
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        let image = pod["spec"]["containers"][0]["image"].as_str().unwrap_or("").to_string();
        if event["type"] == "DELETED" {
            live.remove(&name);
            deleted += 1;
            continue;
        }
        if !live.contains_key(&name) {
            let others: Vec<_> = live.iter().filter(|(_, i)| **i != image).collect();
            ensure!(others.is_empty(), "{name} ({image}) was made while these lived: {others:?}");
            made += 1;
        }
        live.insert(name, image);
    }
    Ok((made, deleted))
}

/// Recreate: every old pod is deleted (gone, not just terminating) before the first new one
/// is made, as a watch of the pods sees it, through `set image` and `rollout undo`.
fn recreate_with(k: &Kubectl, ns: &str) -> Result<()> {
    let deploy = "deployment/recreate";
    let status = |k: &Kubectl| k.ok(&["rollout", "status", deploy, "-n", ns, "--timeout=120s"]);
    let command = "trap 'exit 0' TERM; while true; do sleep 1; done";
    k.ok(&["create", "deployment", "recreate", "--image=busybox:v1", "-n", ns, "--", "sh", "-c", command])?;
    k.ok(&["patch", deploy, "-n", ns, "-p", r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#])?;
    k.ok(&["scale", deploy, "--replicas=2", "-n", ns])?;
    status(k)?;
    let log = tempfile::NamedTempFile::new()?;
    let mut watch = k
        .command(&["get", "pods", "-n", ns, "-l", "app=recreate", "-w", "--output-watch-events", "-o", "json"])
        .stdout(log.reopen()?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let steps = (|| -> Result<()> {
        k.ok(&["set", "image", deploy, "busybox=busybox:v2", "-n", ns])?;
        let out = status(k)?;
        ensure!(out.contains("successfully rolled out"), "{out}");
        until(k, &["get", "pods", "-n", ns, "-l", "app=recreate", "-o", "name"], "two new pods", |o| {
            o.lines().count() == 2
        })?;
        ensure!(images_of_ready_pods(k, ns, "recreate")? == ["busybox:v2"; 2]);
        k.ok(&["rollout", "undo", deploy, "-n", ns])?;
        let out = status(k)?;
        ensure!(out.contains("successfully rolled out"), "{out}");
        until(k, &["get", "pods", "-n", ns, "-l", "app=recreate", "-o", "name"], "undone", |o| o.lines().count() == 2)?;
        ensure!(images_of_ready_pods(k, ns, "recreate")? == ["busybox:v1"; 2]);
        // Let the watch catch up with the last deletions.
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    })();
    watch.kill()?;
    watch.wait()?;
    steps?;
    let (made, deleted) = recreate_order(&std::fs::read_to_string(log.path())?)?;
    // Not vacuous: the two first pods as listed, two new ones, two undone.
    ensure!(made >= 6 && deleted >= 4, "the watch saw {made} pods made and {deleted} deleted");
    k.ok(&["delete", deploy, "-n", ns, "--timeout=60s"])?;
    Ok(())
}

#[test]
fn deployments_roll_out_on_real_pods() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = "workloads-e2e-node";
    let (bridge, cidr) = own_network("atw", 150);
    let cluster = up_with_node(dir.path(), node, &bridge, &cidr)?;
    let result = (|| -> Result<()> {
        let admin = Kubectl {
            bin: kubectl_binary(33)?,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            cache: tempfile::tempdir()?,
        };
        admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["alice"])))?;
        admin.eventually(&["get", "node", node])?;
        for minor in [27, 30, 33] {
            let config = dir.path().join(format!("alice-{minor}.kubeconfig"));
            let made = Command::new(env!("CARGO_BIN_EXE_atoll"))
                .args(["admin", "kubeconfig", "--tenant", "acme", "--user", "alice", "--data-dir"])
                .arg(dir.path())
                .arg("--output")
                .arg(&config)
                .status()?;
            ensure!(made.success(), "atoll admin kubeconfig failed");
            let alice = Kubectl { bin: kubectl_binary(minor)?, kubeconfig: config, cache: tempfile::tempdir()? };
            let ns = format!("apps-{minor}");
            alice.eventually(&["create", "namespace", &ns])?;
            roll_out_with(&alice, &ns, minor).with_context(|| format!("kubectl 1.{minor}"))?;
            if minor == 33 {
                recreate_with(&alice, &ns).context("Recreate")?;
            }
        }
        Ok(())
    })();
    let mut cluster = cluster;
    result.and(stop_with_network(&mut cluster, &bridge, Duration::from_secs(60)))
}

/// A Deployment resized in the middle of a rollout spreads the change over its ReplicaSets
/// in proportion (Kubernetes' documented example). No node runs the pods, so none becomes
/// available and the rollout stays where maxSurge and maxUnavailable stop it: 8 old, 5 new.
#[test]
fn deployments_scale_in_proportion_mid_rollout() -> Result<()> {
    let server = Server::start()?;
    let _controllers = server.start_controllers()?;
    let admin = Kubectl::new(33, &server)?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["alice"])))?;
    let alice = server.user("acme", "alice", 30)?;
    alice.eventually(&["create", "namespace", "prop"])?;
    let deploy = "deployment/web";
    alice.ok(&["create", "deployment", "web", "--image=busybox:v1", "--replicas=10", "-n", "prop"])?;
    let strategy = r#"{"spec":{"strategy":{"rollingUpdate":{"maxSurge":3,"maxUnavailable":2}}}}"#;
    alice.ok(&["patch", deploy, "-n", "prop", "-p", strategy])?;
    let sizes = |want: &str| {
        until(&alice, &["get", "rs", "-n", "prop", "-o", "jsonpath={.items[*].spec.replicas}"], want, |o| {
            let mut got: Vec<&str> = o.split_whitespace().collect();
            got.sort();
            let mut wanted: Vec<&str> = want.split_whitespace().collect();
            wanted.sort();
            got == wanted
        })
    };
    sizes("10")?;
    alice.ok(&["set", "image", deploy, "busybox=busybox:v2", "-n", "prop"])?;
    sizes("8 5")?;
    // Stuck there: nothing more moves.
    std::thread::sleep(Duration::from_secs(2));
    sizes("8 5")?;
    alice.ok(&["scale", deploy, "--replicas=15", "-n", "prop"])?;
    let images = "jsonpath={range .items[*]}{.spec.template.spec.containers[0].image}={.spec.replicas} {end}";
    sizes("11 7")?;
    let by_image = alice.ok(&["get", "rs", "-n", "prop", "-o", images])?;
    ensure!(by_image.contains("busybox:v1=11") && by_image.contains("busybox:v2=7"), "{by_image}");
    until(&alice, &["get", "pods", "-n", "prop", "-o", "name"], "18 pods", |o| o.lines().count() == 18)?;
    let annotations = alice.ok(&[
        "get",
        "rs",
        "-n",
        "prop",
        "-o",
        "jsonpath={.items[*].metadata.annotations.deployment\\.kubernetes\\.io/desired-replicas}",
    ])?;
    ensure!(annotations == "15 15", "desired-replicas: {annotations}");

    // Events, as `kubectl describe` shows them: the Deployment's scaling, the sets' pods.
    let hashes = alice.ok(&[
        "get",
        "rs",
        "-n",
        "prop",
        "-o",
        "jsonpath={range .items[*]}{.spec.template.spec.containers[0].image} {.metadata.name}{\"\\n\"}{end}",
    ])?;
    let name_of =
        |image: &str| hashes.lines().find_map(|l| l.strip_prefix(&format!("{image} "))).unwrap_or("").to_string();
    let (v1, v2) = (name_of("busybox:v1"), name_of("busybox:v2"));
    ensure!(!v1.is_empty() && !v2.is_empty(), "{hashes}");
    let wanted = [
        format!("Scaled up replica set {v2} to 3"),
        format!("Scaled down replica set {v1} to 8"),
        format!("Scaled up replica set {v2} to 5"),
        format!("Scaled up replica set {v1} to 11"),
        format!("Scaled up replica set {v2} to 7"),
    ];
    until(&alice, &["describe", deploy, "-n", "prop"], "the Deployment's events", |o| {
        o.contains("ScalingReplicaSet") && wanted.iter().all(|w| o.contains(w.as_str()))
    })?;
    until(&alice, &["describe", "rs", &v2, "-n", "prop"], "the ReplicaSet's events", |o| {
        o.contains("SuccessfulCreate") && o.contains(&format!("Created pod: {v2}-"))
    })?;
    let selector = format!("involvedObject.name={v2},reason=SuccessfulCreate");
    let created = items(&alice, &["get", "events", "-n", "prop", "--field-selector", &selector])?;
    ensure!(created.len() == 7, "one event per pod: {created:?}");
    ensure!(created.iter().all(|e| e["source"]["component"] == "replicaset-controller"), "{created:?}");
    // A pod the API refuses: FailedCreate with the API's message, on the set.
    let broken = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "broken", "namespace": "prop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "broken"}},
                 "template": {"metadata": {"labels": {"app": "broken"}},
                              "spec": {"runtimeClassName": "missing", "containers": [{"name": "c", "image": "busybox:v1"}]}}},
    });
    alice.ok_with(&["create", "-f", "-"], Some(&broken.to_string()))?;
    until(&alice, &["describe", "rs", "broken", "-n", "prop"], "FailedCreate", |o| {
        o.contains("FailedCreate") && o.contains("Error creating:") && o.contains("RuntimeClass \"missing\" not found")
    })?;
    let failed = items(&alice, &["get", "events", "-n", "prop", "--field-selector", "reason=FailedCreate"])?;
    ensure!(failed.iter().all(|e| e["type"] == "Warning"), "{failed:?}");
    Ok(())
}

/// A ReplicaSet adopts the orphans its selector matches (found by label, as the controller's
/// index has them) and leaves the rest; an orphan made later is claimed too, and the set
/// stays at its replicas.
#[test]
fn a_replicaset_adopts_matching_orphans_and_leaves_the_rest() -> Result<()> {
    let server = Server::start()?;
    let _controllers = server.start_controllers()?;
    let admin = Kubectl::new(33, &server)?;
    let bare = |name: &str, labels: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        .to_string()
    };
    let orphans = [
        ("both", json!({"app": "adopt", "tier": "x"})),
        ("both-and-more", json!({"app": "adopt", "tier": "x", "extra": "1"})),
        ("app-only", json!({"app": "adopt"})),
        ("tier-only", json!({"tier": "x"})),
        ("same-key-other-value", json!({"app": "other", "tier": "x"})),
    ];
    for (name, labels) in &orphans {
        admin.ok_with(&["create", "-f", "-"], Some(&bare(name, labels.clone())))?;
    }
    let rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "claims", "namespace": "default"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "adopt", "tier": "x"}},
                 "template": {"metadata": {"labels": {"app": "adopt", "tier": "x"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    });
    admin.ok_with(&["create", "-f", "-"], Some(&rs.to_string()))?;
    let rs_uid = uid(&admin, &["get", "rs", "claims", "-n", "default"])?;
    let owners = || -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for pod in items(&admin, &["get", "pods", "-n", "default"])? {
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            let owner = pod["metadata"]["ownerReferences"][0]["uid"].as_str().unwrap_or("").to_string();
            out.push((name, owner));
        }
        Ok(out)
    };
    let settled = |want_owned: usize| -> Result<Vec<(String, String)>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = owners()?;
            if now.iter().filter(|(_, o)| *o == rs_uid).count() == want_owned {
                return Ok(now);
            }
            ensure!(Instant::now() < deadline, "the set never owned {want_owned} pods: {now:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let now = settled(3)?;
    let owned: Vec<&str> = now.iter().filter(|(_, o)| *o == rs_uid).map(|(n, _)| n.as_str()).collect();
    ensure!(owned.contains(&"both") && owned.contains(&"both-and-more"), "the matching orphans: {now:?}");
    for name in ["app-only", "tier-only", "same-key-other-value"] {
        ensure!(now.iter().any(|(n, o)| n == name && o.is_empty()), "{name} was claimed or lost: {now:?}");
    }
    ensure!(now.len() == 6, "one pod made for the two adopted: {now:?}");
    // An orphan that matches, made later: claimed, and one of the set's four goes.
    admin.ok_with(&["create", "-f", "-"], Some(&bare("late", json!({"tier": "x", "app": "adopt"}))))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = owners()?;
        let late = now.iter().find(|(n, _)| n == "late");
        let owned = now.iter().filter(|(_, o)| *o == rs_uid).count();
        if late.is_none_or(|(_, o)| *o == rs_uid) && owned == 3 && now.len() == 6 {
            break;
        }
        ensure!(Instant::now() < deadline, "the late orphan was not claimed: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// What the ReplicaSet controller costs: how fast it brings a set to 1,000 pods and back
/// to none (printed; the pods need no node to exist, so this is the controller and the
/// API server alone). Not timed beyond the test's own patience.
#[test]
fn replicaset_controller_creates_and_deletes_pods_in_bulk() -> Result<()> {
    let server = Server::start()?;
    let controllers = server.start_controllers()?;
    // The controllers' CPU seconds so far (user + system, at Linux's 100 ticks a second).
    let cpu = || -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", controllers.0.id()))?;
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        Ok((ticks(11) + ticks(12)) / 100.0)
    };
    let admin = Kubectl::new(33, &server)?;
    let rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "bulk", "namespace": "default"},
        "spec": {"replicas": 1000, "selector": {"matchLabels": {"app": "bulk"}},
                 "template": {"metadata": {"labels": {"app": "bulk"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    });
    let started = Instant::now();
    let cpu_before = cpu()?;
    admin.ok_with(&["create", "-f", "-"], Some(&rs.to_string()))?;
    let count =
        |k: &Kubectl| -> Result<usize> { Ok(k.ok(&["get", "pods", "-n", "default", "-o", "name"])?.lines().count()) };
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&admin)? < 1000 {
        ensure!(Instant::now() < deadline, "1,000 pods not made in 2 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = started.elapsed();
    // Never more than asked for, even while the cache lagged its own writes.
    std::thread::sleep(Duration::from_secs(2));
    ensure!(count(&admin)? == 1000, "over-created: {}", count(&admin)?);
    until(&admin, &["get", "rs", "bulk", "-n", "default", "-o", "jsonpath={.status.replicas}"], "status", |o| {
        o == "1000"
    })?;
    let started = Instant::now();
    admin.ok(&["scale", "rs", "bulk", "--replicas=0", "-n", "default"])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&admin)? > 0 {
        ensure!(Instant::now() < deadline, "pods not deleted in 2 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    let down = started.elapsed();
    let cpu_used = cpu()? - cpu_before;
    // Events are best effort and bounded (25 per object, then one per 5 minutes).
    let events = admin.ok(&["get", "events", "-n", "default", "-o", "name"])?.lines().count();
    println!("replicaset controller: {cpu_used:.2} CPU s for 2,000 pod writes, {events} events written");
    println!(
        "replicaset controller: 1000 pods created in {:.2} s ({:.0}/s), deleted in {:.2} s ({:.0}/s)",
        up.as_secs_f64(),
        1000.0 / up.as_secs_f64(),
        down.as_secs_f64(),
        1000.0 / down.as_secs_f64()
    );
    Ok(())
}

/// What is left on the machine of the pod with `uid` and containers `containers` (IDs),
/// under the agent folder `agent_dir`: cgroups, network namespace, veths on `bridge`,
/// sandbox and container folders, mounts, processes.
fn leftovers(uid: &str, containers: &[String], agent_dir: &Path, bridge: &str) -> Result<Vec<String>> {
    let mut left = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")? {
        let dir = h?.path().join(format!("atoll/pod-{uid}"));
        if dir.exists() {
            left.push(dir.display().to_string());
        }
    }
    let mut paths =
        vec![Path::new("/run/netns").join(format!("atoll-{uid}")), agent_dir.join("runtime/sandboxes").join(uid)];
    paths.extend(containers.iter().map(|c| agent_dir.join("runtime/containers").join(c)));
    paths.extend(containers.iter().map(|c| agent_dir.join("layers").join(c)));
    left.extend(paths.into_iter().filter(|p| p.exists()).map(|p| p.display().to_string()));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let runtime = agent_dir.join("runtime").display().to_string();
    // The runtime folder itself is the agent's tmpfs for as long as it runs: anything else
    // mounted in or under it is a pod's.
    let mount_point = |l: &str| l.split(' ').nth(4).map(str::to_owned).unwrap_or_default();
    left.extend(mounts.lines().filter(|l| l.contains(&runtime) && mount_point(l) != runtime).map(str::to_string));
    let veths = Command::new("ip").args(["-o", "link", "show", "master", bridge]).output()?;
    // Links named `vp…` are the agent's pool of networks made ahead for pods to come (no
    // pod's; `stop_with_network` checks that they go with the agent).
    left.extend(String::from_utf8_lossy(&veths.stdout).lines().filter(|l| !l.contains(": vp")).map(str::to_string));
    for p in std::fs::read_dir("/proc")? {
        let cmdline = std::fs::read(p?.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if containers.iter().any(|c| cmdline.contains(c.as_str())) {
            left.push(format!("process {cmdline}"));
        }
    }
    Ok(left)
}

/// An agent killed with SIGKILL leaves its pods behind; their pods are deleted while it is
/// down; restarted on the same data directory, it removes every cgroup, network namespace,
/// veth, mount, folder and supervisor they left: a running pod's, an exited one's and one
/// whose image pull failed before any container started.
#[test]
fn a_restarted_agent_removes_what_pods_deleted_in_its_absence_left() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = "crash-e2e-node";
    let (bridge, cidr) = own_network("atc", 190);
    let agent_dir = dir.path().join("agent");
    let admin = Kubectl {
        bin: kubectl_binary(33)?,
        kubeconfig: dir.path().join("admin.kubeconfig"),
        cache: tempfile::tempdir()?,
    };
    let pod = |name: &str, image: &str, command: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "main", "image": image, "command": ["sh", "-c", command]}]}})
        .to_string()
    };
    let mut cluster = up_with_node(dir.path(), node, &bridge, &cidr)?;
    let result = (|| -> Result<Vec<(String, Vec<String>)>> {
        admin.eventually(&["get", "node", node])?;
        admin.eventually(&["get", "serviceaccount", "default"])?;
        admin.ok_with(&["create", "-f", "-"], Some(&pod("running", "busybox:v1", "sleep 3600")))?;
        admin.ok_with(&["create", "-f", "-"], Some(&pod("exited", "busybox:v1", "true")))?;
        // Nothing listens on port 9: the pull fails after the sandbox and network are made.
        admin.ok_with(&["create", "-f", "-"], Some(&pod("unpullable", "127.0.0.1:9/none/app:v1", "true")))?;
        admin.ok(&["wait", "pod/running", "--for=jsonpath={.status.phase}=Running", "--timeout=60s"])?;
        admin.ok(&["wait", "pod/exited", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=60s"])?;
        until(
            &admin,
            &["get", "pod", "unpullable", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}"],
            "a failed pull",
            |r| r == "ErrImagePull" || r == "ImagePullBackOff",
        )?;
        let mut pods = Vec::new();
        for name in ["running", "exited", "unpullable"] {
            let p: Value = serde_json::from_str(&admin.ok(&["get", "pod", name, "-o", "json"])?)?;
            let containers = p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["containerID"].as_str())
                .map(|id| id.rsplit('/').next().unwrap_or("").to_string())
                .collect::<Vec<_>>();
            let uid = p["metadata"]["uid"].as_str().context("uid")?.to_string();
            // Not vacuous: each pod has something to leave.
            ensure!(!leftovers(&uid, &containers, &agent_dir, &bridge)?.is_empty(), "{name} left nothing to find");
            pods.push((uid, containers));
        }
        ensure!(pods[0].1.len() == 1 && pods[1].1.len() == 1 && pods[2].1.is_empty(), "container IDs: {pods:?}");
        Ok(pods)
    })();
    // SIGKILL: the agent stops nothing; the running container and its supervisor live on.
    drop(cluster);
    let pods = result?;
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/atoll/pod-{}/{}/cgroup.procs", pods[0].0, pods[0].1[0]))
            .unwrap_or_default();
    ensure!(!procs.trim().is_empty(), "the running pod's container outlived its agent");
    // Its records are on the agent's tmpfs, which outlives the agent for the next one to find.
    let runtime = agent_dir.join("runtime").display().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let tmpfs = |l: &&str| l.split(' ').nth(4) == Some(runtime.as_str()) && l.contains(" - tmpfs ");
    ensure!(mountinfo.lines().any(|l| tmpfs(&l)), "no tmpfs on {runtime} after the agent was killed");

    // The pods go while no agent runs (forced: nobody is there to confirm).
    cluster = start_up(dir.path(), &["--no-agent"])?;
    let deleted = admin.ok(&["delete", "pod", "running", "exited", "unpullable", "--force", "--grace-period=0"]);
    let stopped = cluster.interrupt(Duration::from_secs(60));
    deleted?;
    stopped?;

    cluster = up_with_node(dir.path(), node, &bridge, &cidr)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        let left: Vec<String> = pods
            .iter()
            .map(|(uid, containers)| leftovers(uid, containers, &agent_dir, &bridge))
            .collect::<Result<Vec<_>>>()?
            .concat();
        if left.is_empty() {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("left behind after the restart: {left:#?}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    result.and(stop_with_network(&mut cluster, &bridge, Duration::from_secs(60)))
}
