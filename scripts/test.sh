#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, unit and integration tests against real
# local clusters. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
# tests/docker_compose.rs runs docker/gen-certs.sh, which needs openssl.
if ! command -v openssl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl >/dev/null
    else
        echo "openssl is missing and cannot be installed without root or sudo" >&2
    fi
fi
cargo fmt --all -- --check
cargo clippy --all-targets --all-features -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
cargo test --all-features
