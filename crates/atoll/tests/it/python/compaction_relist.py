"""The official Kubernetes Python client against a server that compacts every second: a
watch from a compacted resource version fails with 410, and the usual recovery (list
again, watch from the list's version) sees later changes. Usage: compaction_relist.py KUBECONFIG"""

import sys
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
ns = "pyc"

v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="a"), data={"k": "1"}))
old = v1.list_namespaced_config_map(ns).metadata.resource_version
# Several writes: compacting at R keeps the events of R itself, so a watch from `old`
# only fails once the compaction point is past old + 1.
for k in range(3):
    v1.patch_namespaced_config_map("a", ns, {"data": {"k": str(k)}})
# Two compaction rounds at --compaction-interval 1s; polled, since a loaded machine may run
# them late. Until then the watch from `old` replays the patches and ends at its timeout.
deadline = time.monotonic() + 20
while True:
    time.sleep(0.5)
    try:
        events = list(watch.Watch().stream(v1.list_namespaced_config_map, ns, resource_version=old, timeout_seconds=1))
    except ApiException as e:
        assert e.status == 410, (e.status, e.reason)
        break
    if time.monotonic() > deadline:
        raise SystemExit(f"a watch from version {old} still worked after 20 s: {events}")

fresh = v1.list_namespaced_config_map(ns)
assert [(i.metadata.name, i.data) for i in fresh.items] == [("a", {"k": "2"})], fresh.items
v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="later"), data={"k": "1"}))
seen = []
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_config_map, ns, resource_version=fresh.metadata.resource_version,
                   timeout_seconds=10):
    seen.append((ev["type"], ev["object"].metadata.name))
    if ev["object"].metadata.name == "later":
        w.stop()
assert seen == [("ADDED", "later")], seen
print("ok")
