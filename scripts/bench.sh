#!/usr/bin/env bash
# Runs the outbox benchmark (bench/src/bin/outbox-bench) against a
# MongoDB-wire server of its own, started empty for the run and stopped
# after it: a long-lived server slows down as its state grows, and the
# shared one on :27017 also serves the tests.
#
#   scripts/bench.sh [--server py|rs] [outbox-bench flags...]
#
#   --server py   SecantusDB's Python server, as the tests use (default)
#   --server rs   SecantusDB's Rust server (built once by
#                 `scripts/deps.sh secantus-rs`, about ten minutes)
#   --mongo H:P   a server of your own instead, e.g. a mongod replica set;
#                 nothing is started
#
# The rest goes to outbox-bench (`--help` lists it), e.g.
#   scripts/bench.sh --server rs --records 10000
#   scripts/bench.sh --only drain --records 100000
# BENCH_MONGO_PORT (default 27117) is the port of the server started here.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/order-service/target}"
PORT="${BENCH_MONGO_PORT:-27117}"

LOG_PREFIX=bench
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

server=py
mongo=""
args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --server)
      server="${2:?--server needs py or rs}"
      shift 2
      ;;
    --mongo)
      mongo="${2:?--mongo needs host:port}"
      shift 2
      ;;
    *)
      args+=("$1")
      shift
      ;;
  esac
done
case "$server" in
  py) extra=() binary=secantusd-py ;;
  rs) extra=(secantus-rs) binary=secantusd-rs ;;
  *)
    log "unknown server: $server (expected py or rs)"
    exit 2
    ;;
esac

# RabbitMQ (and the Python server on :27017, which the bench leaves alone);
# with a server of the caller's, RabbitMQ alone.
if [ -n "$mongo" ]; then
  scripts/deps.sh --broker-only
else
  scripts/deps.sh "${extra[@]}"
fi

log "building outbox-bench (release)"
cargo build --release -p realtime-bench --bin outbox-bench

pid=""
data=""
cleanup() {
  local status=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ -n "$data" ]; then
    rm -rf "$data"
    # The server's log tells why a failed run failed.
    if [ "$status" = 0 ]; then
      rm -f "$data.log"
    else
      log "server log kept: $data.log"
    fi
  fi
}
trap cleanup EXIT INT TERM

if [ -z "$mongo" ]; then
  if port_open "$PORT"; then
    log "port $PORT is taken; stop what listens there or set BENCH_MONGO_PORT"
    exit 1
  fi
  data="$(mktemp -d /var/tmp/outbox-bench-XXXXXX)"
  log "starting $binary on $PORT (data in $data)"
  "$binary" --host 127.0.0.1 --port "$PORT" --storage-path "$data" >"$data.log" 2>&1 &
  pid=$!
  wait_port "$PORT" "$binary" 120 "$pid" || {
    tail -5 "$data.log" >&2
    exit 1
  }
  mongo="127.0.0.1:$PORT"
fi

"$CARGO_TARGET_DIR/release/outbox-bench" --mongo "$mongo" "${args[@]}"
