"""The official Kubernetes Python client against an Atoll server: CRUD, selectors,
paging, optimistic concurrency, errors and a watch. Usage: client_crud.py KUBECONFIG"""

import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
ns = "py"

v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
for i in range(3):
    meta = client.V1ObjectMeta(name=f"c{i}", labels={"i": str(i), "app": "py"})
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=meta, data={"k": str(i)}))

got = v1.read_namespaced_config_map("c1", ns)
assert got.data == {"k": "1"}, got.data
assert got.metadata.uid and got.metadata.resource_version

selected = v1.list_namespaced_config_map(ns, label_selector="i in (0,2)")
assert sorted(i.metadata.name for i in selected.items) == ["c0", "c2"], selected.items

page = v1.list_namespaced_config_map(ns, limit=2)
assert len(page.items) == 2 and page.metadata._continue, page.metadata
rest = v1.list_namespaced_config_map(ns, limit=2, _continue=page.metadata._continue)
assert [i.metadata.name for i in rest.items] == ["c2"], rest.items
start = page.metadata.resource_version

stale = v1.read_namespaced_config_map("c1", ns)
got.data["k"] = "updated"
v1.replace_namespaced_config_map("c1", ns, got)
stale.data["k"] = "lost update"
try:
    v1.replace_namespaced_config_map("c1", ns, stale)
    raise SystemExit("a stale replace succeeded")
except ApiException as e:
    assert e.status == 409, e

v1.patch_namespaced_config_map("c1", ns, {"metadata": {"labels": {"patched": "yes"}}})
assert v1.read_namespaced_config_map("c1", ns).metadata.labels["patched"] == "yes"
v1.delete_namespaced_config_map("c2", ns)

try:
    v1.read_namespaced_config_map("c2", ns)
    raise SystemExit("a deleted config map is still there")
except ApiException as e:
    assert e.status == 404, e

seen = []
w = watch.Watch()
for event in w.stream(v1.list_namespaced_config_map, ns, resource_version=start, timeout_seconds=10):
    seen.append((event["type"], event["object"].metadata.name))
    if len(seen) == 3:
        w.stop()
assert seen == [("MODIFIED", "c1"), ("MODIFIED", "c1"), ("DELETED", "c2")], seen
# Server-side apply (the client sends the configuration as JSON, which is YAML too), and
# the field manager derived from the client's User-Agent on ordinary writes.
body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}}
applied = v1.patch_namespaced_config_map(
    "applied", ns, body, field_manager="py-apply", _content_type="application/apply-patch+yaml"
)
assert applied.data == {"a": "1"}, applied.data
assert [(m.manager, m.operation) for m in applied.metadata.managed_fields] == [("py-apply", "Apply")]
created = v1.read_namespaced_config_map("c0", ns)
assert created.metadata.managed_fields[0].manager == "OpenAPI-Generator", created.metadata.managed_fields
print("ok")
