#!/usr/bin/env bash
# Runs the Order Service locally with everything it needs: starts SecantusDB
# and RabbitMQ when missing (scripts/deps.sh), the Flutterwave simulator on
# 127.0.0.1:4010 unless something already answers there, then the service on
# PORT (default 4006). The configuration defaults point at exactly these, so
# nothing needs editing; a .env file at the repository root, if present,
# overrides them. Ctrl-C stops the service and the simulator this script started.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ -f .env ]; then
  set -a
  # shellcheck disable=SC1091
  . ./.env
  set +a
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/order-service/target}"
SIM_ADDR=127.0.0.1:4010
SIM_PORT=4010

LOG_PREFIX=run
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

scripts/deps.sh

# One build for both binaries, then run them directly: `cargo run -p X` per
# package would resolve features per package and rebuild shared crates.
log "building order-service and flutterwave-sim (release)"
cargo build --release -p order-service -p flutterwave-sim --bins
BIN="$CARGO_TARGET_DIR/release"

sim_pid=""
svc_pid=""
cleanup() {
  if [ -n "$sim_pid" ] && kill -0 "$sim_pid" 2>/dev/null; then
    log "stopping the Flutterwave simulator"
    kill -TERM "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if port_open "$SIM_PORT"; then
  log "something already answers on $SIM_ADDR; using it as the Flutterwave simulator"
else
  log "starting the Flutterwave simulator on $SIM_ADDR"
  "$BIN/flutterwave-sim" --addr "$SIM_ADDR" &
  sim_pid=$!
  wait_port "$SIM_PORT" "the simulator" 120 "$sim_pid" || exit 1
fi

# In the background so that a TERM sent to this script reaches the service
# too; the service shuts down gracefully on INT and TERM.
log "starting order-service"
"$BIN/order-service" &
svc_pid=$!
trap 'kill -TERM "$svc_pid" 2>/dev/null || true' INT TERM
status=0
wait "$svc_pid" || status=$?
# A trapped signal interrupts `wait`; keep waiting until the service is gone.
while kill -0 "$svc_pid" 2>/dev/null; do
  status=0
  wait "$svc_pid" || status=$?
done
exit "$status"
