#!/usr/bin/env bash
# Starts the local dependencies of the Order Service that are missing and
# reuses those already running: a MongoDB-wire server (SecantusDB, standing in
# for MongoDB where no mongod can be installed) and RabbitMQ. Idempotent: run
# it as often as you like. Installs what is missing from the package
# registries (pip, apt), so a fresh machine needs nothing done by hand.
set -euo pipefail

MONGO_PORT="${MONGO_PORT:-27017}"
RABBITMQ_PORT="${RABBITMQ_PORT:-5672}"
DATA_DIR="${ORDER_DATA_DIR:-/var/tmp/gigconnect-order}"
SECANTUS_VERSION="0.7.0b3"

log() { printf 'deps: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do
    port_open "$port" && return 0
    sleep 0.5
  done
  log "$what did not open port $port"
  return 1
}

apt_install() {
  # apt needs its lists once per machine before it can find anything.
  if [ ! -f /var/lib/apt/periodic/order-service-updated ]; then
    apt-get update -qq
    mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/order-service-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rabbitmq() {
  if port_open "$RABBITMQ_PORT"; then
    log "RabbitMQ already listening on $RABBITMQ_PORT"
    return
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "installing rabbitmq-server"
    apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port "$RABBITMQ_PORT" RabbitMQ 240
  rabbitmqctl await_startup >/dev/null 2>&1 || true
}

ensure_mongo() {
  if port_open "$MONGO_PORT"; then
    log "MongoDB-wire server already listening on $MONGO_PORT"
    return
  fi
  if ! command -v secantusd-py >/dev/null 2>&1; then
    log "installing SecantusDB $SECANTUS_VERSION"
    python3 -m pip install --quiet --disable-pip-version-check "secantusdb==$SECANTUS_VERSION"
    hash -r
  fi
  mkdir -p "$DATA_DIR/secantus"
  log "starting SecantusDB on $MONGO_PORT (data in $DATA_DIR/secantus)"
  # setsid: the server outlives this script and the shell that ran it.
  setsid nohup secantusd-py --host 127.0.0.1 --port "$MONGO_PORT" \
    --storage-path "$DATA_DIR/secantus" >"$DATA_DIR/secantus.log" 2>&1 < /dev/null &
  wait_port "$MONGO_PORT" SecantusDB 120
}

mkdir -p "$DATA_DIR"
ensure_rabbitmq
ensure_mongo
log "ready: mongodb://127.0.0.1:$MONGO_PORT amqp://127.0.0.1:$RABBITMQ_PORT"
