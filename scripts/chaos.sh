#!/usr/bin/env bash
# Runs the chaos suite (chaos/): it starts its OWN MongoDB-wire server,
# RabbitMQ node, fault proxies, Flutterwave simulator and service instances
# on loopback, and never touches the machine's shared services. This script
# only makes sure the programs it needs are installed (scripts/deps.sh).
#
#   scripts/chaos.sh --short            the CI subset (a few minutes)
#   scripts/chaos.sh                    every fault (the full run in README.md)
#   scripts/chaos.sh --fault broker-killed --orders 60
#
# Writes target/chaos/chaos-<mode>.md and .json; exits non-zero when any
# invariant is violated.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/order-service/target}"

# Installs SecantusDB and rabbitmq-server when missing (and starts the shared
# instances the tests use; the suite starts its own beside them).
scripts/deps.sh
cargo build -p chaos --bin chaos
exec "$CARGO_TARGET_DIR/debug/chaos" run --out target/chaos "$@"
