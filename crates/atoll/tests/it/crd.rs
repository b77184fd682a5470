//! CustomResourceDefinitions end to end: the real kubectl defines a kind, uses it through
//! every feature the definition declares, in several versions, and per tenant.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::server::{Kubectl, Server, namespace_json, tenant_admins_json};

fn widgets_crd() -> Value {
    let schema = json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "integer", "minimum": 1, "maximum": 10},
                    "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                    "replicas": {"type": "integer", "minimum": 0},
                    "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port"],
                              "items": {"type": "object", "required": ["port"],
                                        "properties": {"port": {"type": "integer"}, "name": {"type": "string"}}}},
                },
            },
            "status": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer"},
                    "selector": {"type": "string"},
                    "conditions": {"type": "array", "items": {"type": "object",
                        "properties": {"type": {"type": "string"}, "status": {"type": "string"}}}},
                },
            },
        },
    });
    let version = |name: &str, storage: bool| {
        json!({
            "name": name, "served": true, "storage": storage,
            "schema": {"openAPIV3Schema": schema},
            "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
            "additionalPrinterColumns": [
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
            ],
        })
    };
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"],
                      "categories": ["all"]},
            "versions": [version("v1", true), version("v1beta1", false)],
        },
    })
}

fn widget(name: &str, ns: &str, spec: Value) -> String {
    json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name, "namespace": ns}, "spec": spec})
        .to_string()
}

fn custom_resources_work_with(minor: u32) -> Result<()> {
    let server = Server::start()?;
    let k = Kubectl::new(minor, &server)?;
    let bad = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.apps"}, "spec": {"group": "apps", "scope": "Somewhere",
        "names": {"plural": "things", "kind": "Thing"}, "versions": [{"name": "v1", "served": true, "storage": true,
        "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"properties": {}}}}}}]}});
    let refused = k.run(&["create", "-f", "-"], Some(&bad.to_string()))?;
    let refused = String::from_utf8_lossy(&refused.stderr).into_owned();
    for expected in ["spec.group", "spec.scope", "spec.versions[0].schema.openAPIV3Schema.properties[spec].type"] {
        ensure!(refused.contains(expected), "an invalid definition reports {expected}: {refused}");
    }

    k.ok_with(&["create", "-f", "-"], Some(&widgets_crd().to_string()))?;
    k.ok(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=10s"])?;
    let resources = k.ok(&["api-resources", "--api-group=example.com"])?;
    ensure!(resources.contains("widgets") && resources.contains("wd") && resources.contains("Widget"), "{resources}");
    k.ok(&["create", "namespace", "w"])?;

    // Defaults are applied and the schema validated, every error reported at once.
    k.ok_with(&["create", "-f", "-"], Some(&widget("w1", "w", json!({"size": 2}))))?;
    let got = k.ok(&["get", "wd", "w1", "-n", "w", "-o", "jsonpath={.spec.size}{.spec.color}{.metadata.tenant}"])?;
    ensure!(got == "2redsystem", "defaulted widget: {got}");
    let invalid = k.run(&["create", "-f", "-"], Some(&widget("w2", "w", json!({"size": 11, "color": "green"}))))?;
    let invalid = String::from_utf8_lossy(&invalid.stderr).into_owned();
    ensure!(
        invalid.contains("spec.size") && invalid.contains("spec.color") && invalid.contains("is invalid"),
        "schema errors: {invalid}"
    );
    let missing = k.run(&["create", "-f", "-"], Some(&widget("w2", "w", json!({"color": "blue"}))))?;
    ensure!(String::from_utf8_lossy(&missing.stderr).contains("spec.size: Required value"), "required field");
    // Unknown fields: refused under strict validation, pruned otherwise.
    let typo = widget("w3", "w", json!({"size": 1, "colour": "red"}));
    let strict = k.run(&["create", "-f", "-"], Some(&typo))?;
    let strict = String::from_utf8_lossy(&strict.stderr).into_owned();
    ensure!(strict.contains("unknown field \"spec.colour\""), "strict validation: {strict}");
    k.ok_with(&["create", "--validate=false", "-f", "-"], Some(&typo))?;
    let pruned = k.ok(&["get", "widget", "w3", "-n", "w", "-o", "json"])?;
    ensure!(!pruned.contains("colour"), "unknown fields are pruned: {pruned}");

    // Printer columns, in lists and for one object.
    let table = k.ok(&["get", "widgets", "-n", "w"])?;
    let header = table.lines().next().unwrap_or("");
    ensure!(header.split_whitespace().collect::<Vec<_>>() == ["NAME", "SIZE", "COLOR", "READY"], "columns: {table}");
    // A column with no value prints empty, as kubectl shows a missing cell.
    ensure!(table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["w1", "2", "red"]), "{table}");

    // The status subresource: the main resource ignores status, the subresource the rest.
    k.ok(&["patch", "widget", "w1", "-n", "w", "--type=merge", "-p", "{\"status\":{\"replicas\":9}}"])?;
    ensure!(k.ok(&["get", "widget", "w1", "-n", "w", "-o", "jsonpath={.status.replicas}"])?.is_empty());
    let status =
        json!({"status": {"replicas": 1, "selector": "app=w1", "conditions": [{"type": "Ready", "status": "True"}]}});
    k.ok(&["patch", "widget", "w1", "-n", "w", "--subresource=status", "--type=merge", "-p", &status.to_string()])?;
    let ready = k.ok(&["get", "widget", "w1", "-n", "w", "--no-headers"])?;
    ensure!(ready.split_whitespace().nth(3) == Some("True"), "the Ready column: {ready}");

    // The scale subresource, through the declared paths.
    k.ok(&["scale", "widget", "w1", "-n", "w", "--replicas=4"])?;
    let scaled = k.ok(&["get", "widget", "w1", "-n", "w", "-o", "jsonpath={.spec.replicas}"])?;
    ensure!(scaled == "4", "scaled: {scaled}");
    let scale = k.ok(&["get", "--raw", "/apis/example.com/v1/namespaces/w/widgets/w1/scale"])?;
    ensure!(scale.contains("\"selector\":\"app=w1\"") && scale.contains("\"replicas\":1"), "{scale}");

    // Every served version reads the same objects.
    let beta = k.ok(&["get", "widgets.v1beta1.example.com", "w1", "-n", "w", "-o", "jsonpath={.apiVersion}"])?;
    ensure!(beta == "example.com/v1beta1", "{beta}");
    // The category puts widgets into `kubectl get all`.
    ensure!(k.ok(&["get", "all", "-n", "w", "-o", "name"])?.contains("widget.example.com/w1"));
    // Selectors and watches work as for built-in kinds.
    k.ok(&["label", "widget", "w1", "-n", "w", "tier=gold"])?;
    k.ok(&["annotate", "widget", "w1", "-n", "w", "note=shiny"])?;
    ensure!(k.ok(&["get", "widget", "w1", "-n", "w", "-o", "jsonpath={.metadata.annotations.note}"])? == "shiny");
    ensure!(k.ok(&["get", "widgets", "-n", "w", "-l", "tier=gold", "-o", "name"])?.trim() == "widget.example.com/w1");
    // describe, the output forms, diff, edit, patches and a watch, as for built-in kinds.
    let described = k.ok(&["describe", "widget", "w1", "-n", "w"])?;
    ensure!(
        described.contains("Spec:") && described.contains("Size:") && described.contains("tier=gold"),
        "{described}"
    );
    ensure!(k.ok(&["get", "widget", "w1", "-n", "w", "-o", "yaml"])?.contains("kind: Widget"));
    ensure!(k.ok(&["get", "widgets", "-n", "w", "-o", "wide"])?.lines().next().unwrap_or("").contains("SIZE"));
    let changed = widget("w1", "w", json!({"size": 3}));
    let diff = k.run(&["diff", "-f", "-"], Some(&changed))?;
    ensure!(diff.status.code() == Some(1), "diff finds the change: {}", String::from_utf8_lossy(&diff.stderr));
    ensure!(String::from_utf8_lossy(&diff.stdout).contains("size: 3"));
    let editor = server.dir.path().join(format!("widget-editor-{minor}.sh"));
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/size: 2/size: 7/' \"$1\"\n")?;
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let edit = k.command(&["edit", "widget", "w1", "-n", "w"]).env("EDITOR", &editor).output()?;
    ensure!(edit.status.success(), "edit: {}", String::from_utf8_lossy(&edit.stderr));
    k.ok(&["patch", "widget", "w1", "-n", "w", "--type=merge", "-p", "{\"spec\":{\"color\":\"blue\"}}"])?;
    k.ok(&[
        "patch",
        "widget",
        "w1",
        "-n",
        "w",
        "--type=json",
        "-p",
        "[{\"op\":\"add\",\"path\":\"/spec/replicas\",\"value\":6}]",
    ])?;
    let patched =
        k.ok(&["get", "widget", "w1", "-n", "w", "-o", "jsonpath={.spec.size}{.spec.color}{.spec.replicas}"])?;
    ensure!(patched == "7blue6", "edited and patched: {patched}");
    let strategic =
        k.fails(&["patch", "widget", "w1", "-n", "w", "--type=strategic", "-p", "{\"spec\":{\"size\":1}}"])?;
    ensure!(strategic.contains("UnsupportedMediaType") || strategic.contains("not supported"), "{strategic}");
    let mut watch = k
        .command(&["get", "widgets", "-n", "w", "-w", "-o", "name", "--request-timeout=20s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().context("watch stdout")?));
    ensure!(lines.next().context("the watch printed nothing")??.starts_with("widget.example.com/"));
    k.ok_with(&["create", "-f", "-"], Some(&widget("w6", "w", json!({"size": 1}))))?;
    let seen = lines.by_ref().take(8).map_while(Result::ok).any(|l| l == "widget.example.com/w6");
    let _ = watch.kill();
    let _ = watch.wait();
    ensure!(seen, "the watch saw the new widget");
    let via_path = k.ok(&["get", "--raw", "/apis/example.com/v1/tenants/system/namespaces/w/widgets/w1"])?;
    ensure!(via_path.contains("\"name\":\"w1\""), "the tenant path form: {via_path}");
    // Client-side apply and edits keep working through the definition's schema.
    k.ok_with(&["apply", "-f", "-"], Some(&widget("w4", "w", json!({"size": 5}))))?;
    k.ok_with(&["apply", "-f", "-"], Some(&widget("w4", "w", json!({"size": 6, "color": "blue"}))))?;
    ensure!(k.ok(&["get", "widget", "w4", "-n", "w", "-o", "jsonpath={.spec.size}{.spec.color}"])? == "6blue");
    // Server-side apply merges the definition's list maps by their keys.
    let ports = |p: Value| widget("w5", "w", json!({"size": 1, "ports": p}));
    k.ok_with(&["apply", "--server-side", "--field-manager=one", "-f", "-"], Some(&ports(json!([{"port": 80}]))))?;
    k.ok_with(&["apply", "--server-side", "--field-manager=two", "-f", "-"], Some(&ports(json!([{"port": 443}]))))?;
    let merged = k.ok(&["get", "widget", "w5", "-n", "w", "-o", "jsonpath={.spec.ports[*].port}"])?;
    ensure!(merged == "80 443", "list-map items of two managers: {merged}");
    let explained = k.ok(&["explain", "widgets.spec"])?;
    ensure!(explained.contains("size") && explained.contains("color"), "kubectl explain: {explained}");

    // Deleting the definition deletes its objects, and its resources leave discovery.
    k.ok(&["delete", "crd", "widgets.example.com", "--timeout=20s"])?;
    ensure!(!k.ok(&["api-resources"])?.contains("widgets"), "widgets left discovery");
    k.ok_with(&["create", "-f", "-"], Some(&widgets_crd().to_string()))?;
    let fresh = k.ok(&["get", "widgets", "-A", "-o", "name"])?;
    ensure!(fresh.trim().is_empty(), "a recreated definition starts empty: {fresh}");
    Ok(())
}

#[test]
fn kubectl_1_27_uses_custom_resources() -> Result<()> {
    custom_resources_work_with(27)
}

#[test]
fn kubectl_1_30_uses_custom_resources() -> Result<()> {
    custom_resources_work_with(30)
}

#[test]
fn kubectl_1_33_uses_custom_resources() -> Result<()> {
    custom_resources_work_with(33)
}

#[test]
fn tenants_define_their_own_kinds_and_share_the_system_tenants() -> Result<()> {
    let server = Server::start()?;
    let admin = Kubectl::new(33, &server)?;
    // Each tenant's user administers it (a binding to the tenant's cluster-admin).
    for (t, admin_user) in [("acme", "alice"), ("globex", "bob")] {
        admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json(t, &[admin_user])))?;
    }
    let alice = server.user("acme", "alice", 33)?;
    let bob = server.user("globex", "bob", 33)?;

    // Alice defines gadgets in acme: nobody else sees the kind.
    let mut gadgets = widgets_crd();
    gadgets["metadata"]["name"] = json!("gadgets.acme.example");
    gadgets["spec"]["group"] = json!("acme.example");
    gadgets["spec"]["names"] = json!({"plural": "gadgets", "kind": "Gadget"});
    alice.ok_with(&["create", "-f", "-"], Some(&gadgets.to_string()))?;
    alice.ok_with(&["create", "-f", "-"], Some(&namespace_json("lab")))?;
    let gadget = json!({"apiVersion": "acme.example/v1", "kind": "Gadget", "metadata": {"name": "g1", "namespace": "lab"},
                        "spec": {"size": 1}});
    alice.ok_with(&["create", "-f", "-"], Some(&gadget.to_string()))?;
    ensure!(alice.ok(&["get", "gadgets", "-n", "lab", "-o", "name"])?.trim() == "gadget.acme.example/g1");
    for (who, k) in [("the system tenant", &admin), ("another tenant", &bob)] {
        ensure!(!k.ok(&["api-resources"])?.contains("gadgets"), "{who} sees acme's kind");
        ensure!(!k.ok(&["get", "crds", "-o", "name"])?.contains("gadgets"), "{who} lists acme's definition");
        let err = k.fails(&["get", "--raw", "/apis/acme.example/v1/namespaces/lab/gadgets"])?;
        ensure!(err.contains("NotFound") && !err.contains("g1"), "{who}: {err}");
    }
    let prefix = format!("https://{}/tenants/acme", server.addr);
    ensure!(admin.ok(&["--server", &prefix, "get", "gadgets", "-n", "lab", "-o", "name"])?.contains("g1"));

    // The system tenant's definitions serve every tenant, each with its own objects.
    admin.ok_with(&["create", "-f", "-"], Some(&widgets_crd().to_string()))?;
    admin.ok(&["create", "namespace", "lab"])?;
    admin.ok_with(&["create", "-f", "-"], Some(&widget("admins", "lab", json!({"size": 1}))))?;
    alice.ok_with(&["create", "-f", "-"], Some(&widget("alices", "lab", json!({"size": 2}))))?;
    ensure!(alice.ok(&["get", "widgets", "-n", "lab", "-o", "name"])?.trim() == "widget.example.com/alices");
    ensure!(admin.ok(&["get", "widgets", "-n", "lab", "-o", "name"])?.trim() == "widget.example.com/admins");
    ensure!(bob.fails(&["get", "crd", "widgets.example.com"])?.contains("NotFound"), "bob reads the system's CRD");
    // A tenant cannot delete the system's definition (it is not in the tenant).
    ensure!(alice.fails(&["delete", "crd", "widgets.example.com"])?.contains("NotFound"));
    // Deleting the system's definition deletes every tenant's widgets, and nothing else.
    admin.ok(&["delete", "crd", "widgets.example.com", "--timeout=20s"])?;
    ensure!(alice.ok(&["get", "gadgets", "-n", "lab", "-o", "name"])?.contains("g1"), "acme's own kind stays");
    let gone = alice.run(&["get", "widgets", "-n", "lab"], None)?;
    let gone_err = String::from_utf8_lossy(&gone.stderr);
    ensure!(
        // kubectl says one or the other depending on whether its discovery cache is fresh.
        !gone.status.success()
            && (gone_err.contains("the server doesn't have a resource type")
                || gone_err.contains("the server could not find the requested resource")),
        "widgets are gone for every tenant: {}{gone_err}",
        String::from_utf8_lossy(&gone.stdout)
    );
    Ok(())
}
