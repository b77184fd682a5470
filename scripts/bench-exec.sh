#!/usr/bin/env bash
# Exec round trip through the API server and the node agent, against its peers measured in
# the same run: a plain kubectl request (`get pod`) and a bare `crun exec` in the same
# container. Needs a running cluster (`atoll up`) and a Running pod:
#   KUBECONFIG=/var/lib/atoll/admin.kubeconfig scripts/bench-exec.sh POD [RUNS] [CRUN_ROOT]
# CRUN_ROOT defaults to /var/lib/atoll/agent/runtime/runtime (the agent's `crun --root`).
set -euo pipefail
pod=$1
runs=${2:-20}
root=${3:-/var/lib/atoll/agent/runtime/runtime}
dir=$(dirname "$(readlink -f "$(command -v kubectl)")")

median() { sort -n | awk '{a[NR]=$1} END {printf "%.0f ms", a[int((NR+1)/2)]}'; }
timed() {
    local i t0 t1
    for ((i = 0; i < runs; i++)); do
        t0=$(date +%s%N)
        "$@" >/dev/null
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000000))
    done | median
}

id=$(crun --root "$root" list -q | head -1)
echo "crun exec (no API):            $(timed crun --root "$root" exec "$id" true)"
for minor in 27 30 33; do
    k="$dir/kubectl.1.$minor"
    echo "kubectl 1.$minor get pod:          $(timed "$k" get pod "$pod" -o name)"
    echo "kubectl 1.$minor exec -- true:     $(timed "$k" exec "$pod" -- true)"
done
