"""The official Kubernetes Python client's port-forward (WebSocket, v4.channel.k8s.io, the
port in the query) to pod `web`, whose port 8080 greets, echoes a line and then sends
20,000 numbered lines. Usage: port_forward.py KUBECONFIG"""

import sys

from kubernetes import client, config
from kubernetes.stream import portforward

config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
pf = portforward(v1.connect_get_namespaced_pod_portforward, "web", "default", ports="8080")
s = pf.socket(8080)
s.settimeout(20)
got = b""
while not got.endswith(b"\n"):
    got += s.recv(100)
assert got == b"hello\n", got
s.sendall(b"ping\nmany\n")
rest = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    rest += chunk
lines = rest.decode().splitlines()
assert lines[0] == "echo ping", lines[:2]
assert len(lines) == 20001 and lines[-1] == "20000", (len(lines), lines[-1:])
assert pf.error(8080) is None, pf.error(8080)
s.close()
print("ok")
