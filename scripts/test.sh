#!/usr/bin/env bash
# Runs the whole workspace's tests against real local dependencies, which
# scripts/deps.sh starts (and installs) when they are missing. Extra
# arguments go to `cargo test`, e.g. `scripts/test.sh -p outbox` or
# `scripts/test.sh -- --test-threads 4`.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/order-service/target}"

# Prometheus, Alertmanager and docker-compose serve the observability tests
# (a real scrape and real inhibitions; validating the compose file without
# an engine).
scripts/deps.sh prometheus docker-compose redis-tls
# The realtime tests drive the reference Socket.IO client (socket.io-client,
# pinned by tests/socket/package-lock.json).
if [ ! -d tests/socket/node_modules ]; then
  npm ci --prefix tests/socket --no-audit --no-fund
fi
cargo test --workspace "$@"
