# Shared by the scripts: install what Atoll needs on Debian 12, idempotently.
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "run this as root (it installs packages, and tests mount filesystems)"
}

# apt_install PACKAGE... : installs only the packages that are missing.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mmin -1440 2>/dev/null | head -1)" ]; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The node agent runs containers with crun (runc selectable) from the local busybox image.
setup_containers() {
  apt_install busybox-static crun runc iproute2 nftables
  # On hybrid cgroup machines (v1 controllers + cgroup2 at unified/) crun 1.8 refuses to run
  # while cgroup2 lists any controller; at boot that is hugetlb. Mounting hugetlb's v1
  # hierarchy moves it off cgroup2 (see PLATFORM.md). Pure cgroup2 machines need nothing.
  local unified=/sys/fs/cgroup/unified/cgroup.controllers
  [ -f "$unified" ] || return 0
  if grep -qw hugetlb "$unified" && ! mountpoint -q /sys/fs/cgroup/hugetlb; then
    mkdir -p /sys/fs/cgroup/hugetlb
    mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
  fi
  if [ -n "$(cat "$unified")" ]; then
    echo "warning: cgroup2 still lists controllers ($(cat "$unified")); crun will refuse to run, runc works" >&2
  fi
}

# VM pods: qemu (TCG here), qemu-img for disk overlays, mke2fs for the busybox-vm image's
# disk, and a guest kernel: Debian's cloud kernel, extracted (not installed: it is the
# guests', not the host's) to /var/cache/atoll/kernel, with stable links `vmlinuz` and
# `modules` there (see PLATFORM.md "VMs": its virtio drivers are modules).
setup_vm() {
  apt_install qemu-system-x86 e2fsprogs
  # Apart, and after: a machine may carry a qemu-utils that Debian's qemu-system-x86
  # replaces (installing it removes a backported qemu-utils), so it is checked last.
  apt_install qemu-utils
  command -v qemu-img >/dev/null || die "qemu-img is missing after installing qemu-utils"
  local dir=/var/cache/atoll/kernel pkg
  [ -f "$dir/vmlinuz" ] && [ -d "$dir/modules" ] && return 0
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  fi
  [ -n "$pkg" ] || die "no Debian cloud kernel package found"
  echo "extracting the guest kernel $pkg into $dir"
  mkdir -p "$dir"
  (cd "$dir" && apt-get download "$pkg" >/dev/null 2>&1) || die "downloading $pkg failed"
  dpkg-deb -x "$dir/$pkg"_*.deb "$dir/root"
  rm -f "$dir"/*.deb
  ln -sfn "$(ls "$dir"/root/boot/vmlinuz-* | head -1)" "$dir/vmlinuz"
  ln -sfn "$(ls -d "$dir"/root/lib/modules/* | head -1)" "$dir/modules"
}

# VM-sandboxed container pods boot a minimal kernel of our own (issue 6: Debian's generic
# one needs ~4 CPU-s under TCG to boot): scripts/guest-kernel.config merged onto
# `allnoconfig` of Debian's linux-source-6.1, everything built in, no modules. Built once
# per (config, source version) into /var/cache/atoll/kernel/sandbox/<key>/, linked as
# sandbox/vmlinux (the uncompressed ELF: qemu boots it through its PVH entry). Takes
# minutes (BENCHMARKS.md); quiet unless it fails.
setup_guest_kernel() {
  local frag dir=/var/cache/atoll/kernel/sandbox key build line
  frag="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/guest-kernel.config"
  apt_install linux-source-6.1 gcc make flex bison bc libelf-dev libssl-dev xz-utils
  key=$( (cat "$frag"; dpkg-query -W -f='${Version}' linux-source-6.1) | sha256sum | cut -c1-16)
  if [ ! -f "$dir/$key/vmlinux" ]; then
    echo "building the sandbox guest kernel $key from linux-source-6.1 (several minutes)"
    mkdir -p "$dir"
    build=$(mktemp -d "$dir/build.XXXXXX")
    tar -xf /usr/src/linux-source-6.1.tar.xz -C "$build" --strip-components=1
    if ! make -C "$build" -s KCONFIG_ALLCONFIG="$frag" allnoconfig >"$build/atoll-build.log" 2>&1; then
      tail -20 "$build/atoll-build.log" >&2; rm -rf "$build"; die "configuring the sandbox guest kernel failed"
    fi
    # Kconfig drops a symbol whose dependencies are unmet without a word: check each survived.
    while read -r line; do
      case $line in
        CONFIG_*) grep -qxF "$line" "$build/.config" || { rm -rf "$build"; die "guest kernel: $line was dropped"; } ;;
      esac
    done <"$frag"
    if ! make -C "$build" -s -j"$(nproc)" vmlinux >>"$build/atoll-build.log" 2>&1; then
      tail -20 "$build/atoll-build.log" >&2; rm -rf "$build"; die "building the sandbox guest kernel failed"
    fi
    mkdir -p "$dir/$key.tmp"
    cp "$build/vmlinux" "$build/.config" "$dir/$key.tmp/"
    rm -rf "$build" "$dir/$key"
    mv "$dir/$key.tmp" "$dir/$key"
  fi
  ln -sfn "$key/vmlinux" "$dir/vmlinux"
  # Builds of older configs, and scratch folders of interrupted ones.
  find "$dir" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
}

setup() {
  need_root
  setup_containers
  setup_vm
  setup_guest_kernel
  # protoc (with the well-known types from libprotobuf-dev) builds the etcd client; etcd-server is the distributed store backend and the
  # peer our benchmarks compare against.
  apt_install ca-certificates curl gcc libc6-dev protobuf-compiler libprotobuf-dev etcd-server
  # The Keystone tests start Debian's real Keystone on loopback (sqlite, its built-in test
  # server keystone-wsgi-public); nothing of it runs as a system service.
  apt_install python3-keystone
  # Image pulls are tested against Debian's registry (distribution 2.8) with htpasswd auth
  # (bcrypt hashes from apache2-utils) and a TLS certificate openssl makes.
  apt_install docker-registry apache2-utils openssl
  # The official Python client is one of the API's test clients.
  command -v python3 >/dev/null || apt_install python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  if ! python3 -c 'import kubernetes' 2>/dev/null; then
    python3 -m pip install --quiet kubernetes 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages kubernetes
  fi
  command -v cargo >/dev/null || die "cargo is missing: install a Rust toolchain (1.89 or newer) with rustup first"
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest from crates.io"
    cargo install --locked cargo-nextest
  fi
}
