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

setup() {
  need_root
  # protoc (with the well-known types from libprotobuf-dev) builds the etcd client; etcd-server is the distributed store backend and the
  # peer our benchmarks compare against.
  apt_install ca-certificates curl gcc libc6-dev protobuf-compiler libprotobuf-dev etcd-server
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
