#!/usr/bin/env bash
# Runs the whole workspace's tests against real local dependencies, which
# scripts/deps.sh starts (and installs) when they are missing. Extra
# arguments go to `cargo test`, e.g. `scripts/test.sh -p outbox` or
# `scripts/test.sh -- --test-threads 4`.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/order-service/target}"

scripts/deps.sh
cargo test --workspace "$@"
