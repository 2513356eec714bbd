#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, unit and integration tests against real
# local clusters. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
cargo fmt --all -- --check
cargo clippy --all-targets --all-features -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
cargo test --all-features
