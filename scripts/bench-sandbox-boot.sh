#!/usr/bin/env bash
# The boot of a VM sandbox by itself, measured in qemu's CPU time (load-independent, unlike
# wall time on a shared machine): qemu with the sandbox runtime's arguments
# (crates/agent/src/runtime/vm/sandbox.rs `qemu_args`), until the guest agent's `ready`
# frame arrives on its virtio-serial port; then qemu's utime + stime from /proc.
#   scripts/bench-sandbox-boot.sh KERNEL INITRD DISK [RUNS] [EXTRA_CMDLINE]
# INITRD and DISK from a node that ran a sandboxed pod (`atoll up` on $D):
# $D/agent/sandbox/guest.cpio (made for KERNEL: modules only for Debian's kernel) and
# $D/agent/sandbox/rootfs/*.ext4. Prints one line per run: CPU-s, wall-s, qemu RSS (MiB).
set -euo pipefail
kernel=$1
initrd=$2
disk=$3
runs=${4:-3}
extra=${5:-}
# Our minimal kernel: MACHINE=microvm,acpi=off (as the sandbox runtime boots it).
machine=${MACHINE:-microvm}
khz=$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
cmdline="console=ttyS0 panic=-1 quiet mitigations=off init_on_alloc=0 init_on_free=0 nokaslr no_timer_check"
cmdline+=" cryptomgr.notests random.trust_cpu=on audit=0 pci=off lsm=capability page_alloc.shuffle=0"
cmdline+=" tsc_early_khz=$khz atoll.hostname=bench $extra"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for ((i = 0; i < runs; i++)); do
    qemu-system-x86_64 -name atoll-sandbox-bench -M "$machine" -accel tcg,tb-size=16 -smp 1 -m 192M \
        -nodefaults -no-user-config -no-reboot -display none -serial "file:$work/console.log" -monitor none \
        -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
        -chardev "socket,id=guest,path=$work/guest.sock,server=on,wait=off" \
        -device virtio-serial-device -device virtserialport,chardev=guest,name=atoll.0 \
        -drive "id=root,file=$disk,format=raw,if=none,readonly=on" -device virtio-blk-device,drive=root &
    qemu=$!
    python3 - "$work/guest.sock" "$qemu" <<'EOF'
import os, socket, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
while not os.path.exists(path):
    time.sleep(0.01)
s = socket.socket(socket.AF_UNIX)
s.settimeout(120)  # the boot's own limit: a hung guest ends the run (recv raises)
s.connect(path)
buf = b""
while b'"ready"' not in buf:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("qemu closed the guest port before ready")
    buf += chunk
wall = time.monotonic() - start
stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
time.sleep(1)
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
print(f"cpu {cpu:.2f} s  wall {wall:.2f} s  rss {int(rss) // 1024} MiB")
EOF
    kill "$qemu"
    wait "$qemu" 2>/dev/null || true
    rm -f "$work/guest.sock"
done
