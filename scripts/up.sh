#!/usr/bin/env bash
# Install what is missing, build Atoll and start it on this machine.
# Environment: ATOLL_DATA_DIR (default /var/lib/atoll), ATOLL_LISTEN (default 127.0.0.1:6443).
cd "$(dirname "$0")/.."
. scripts/lib.sh
setup
cargo build --release -p atoll
data_dir=${ATOLL_DATA_DIR:-/var/lib/atoll}
listen=${ATOLL_LISTEN:-127.0.0.1:6443}
mkdir -p "$data_dir"
# The node's local busybox image, so a first pod runs with no network (same binary, same digest).
target/release/atoll image build-busybox --data-dir "$data_dir"
# The node's local VM image for VM pods (a kernel, busybox in an initramfs, a small disk).
target/release/atoll image build-busybox-vm --data-dir "$data_dir" \
  --kernel /var/cache/atoll/kernel/vmlinuz --modules /var/cache/atoll/kernel/modules
echo "starting atoll on $listen with data in $data_dir (Ctrl-C stops it)"
exec target/release/atoll up --data-dir "$data_dir" --listen "$listen"
