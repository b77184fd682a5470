#!/usr/bin/env bash
# Install what is missing and run the whole test suite (as root: some tests mount
# filesystems and start etcd clusters on loopback).
cd "$(dirname "$0")/.."
. scripts/lib.sh
setup
# A clean checkout gains nothing from incremental state: it only costs disk.
[ "${CI:-}" = true ] && export CARGO_INCREMENTAL=0
cargo fmt --all -- --check || die "code is not formatted: run cargo fmt --all"
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo nextest run --workspace --no-fail-fast "$@"
