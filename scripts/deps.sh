#!/usr/bin/env bash
# Starts the local dependencies of the Order Service that are missing and
# reuses those already running: a MongoDB-wire server (SecantusDB, standing in
# for MongoDB where no mongod can be installed), RabbitMQ and Redis (plus
# Node.js for the Socket.IO test client). Idempotent: run
# it as often as you like. Installs what is missing from the package
# registries (pip, apt), so a fresh machine needs nothing done by hand.
#
#   scripts/deps.sh                              MongoDB-wire server, RabbitMQ, Redis
#   scripts/deps.sh prometheus docker-compose redis-tls secantus-rs
#                                                the same, then these tools too
#   scripts/deps.sh --broker-only                RabbitMQ alone (the benchmark
#                                                against a server of your own)
#
# The optional names only install tools (Debian's prometheus/promtool,
# prometheus-alertmanager/amtool and docker-compose, used by the
# observability tests; redis-server and openssl, with which the realtime
# tests start a TLS-only Redis of their own; SecantusDB's Rust server, for
# the benchmark); they start nothing.
set -euo pipefail

MONGO_PORT="${MONGO_PORT:-27017}"
RABBITMQ_PORT="${RABBITMQ_PORT:-5672}"
REDIS_PORT="${REDIS_PORT:-6379}"
DATA_DIR="${ORDER_DATA_DIR:-/var/tmp/gigconnect-order}"
SECANTUS_VERSION="0.7.0b3"

LOG_PREFIX=deps
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install() {
  # apt needs its lists once per machine before it can find anything.
  if [ ! -f /var/lib/apt/periodic/order-service-updated ]; then
    apt-get update -qq
    mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/order-service-updated
  fi
  # Stale lists on a reused machine: refresh once and try again.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
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

# Debian's prometheus (with promtool) and prometheus-alertmanager (with
# amtool), those not on PATH. Installing them would normally start their
# daemons on :9090 and :9093; a temporary policy-rc.d forbids that, and is
# removed only if this script created it. A daemon that runs anyway (started
# by a package or by anyone else) is left alone: tests start their own on a
# free port.
ensure_prometheus() {
  local packages=()
  command -v prometheus >/dev/null 2>&1 || packages+=(prometheus)
  command -v prometheus-alertmanager >/dev/null 2>&1 || packages+=(prometheus-alertmanager)
  if [ "${#packages[@]}" -eq 0 ]; then
    log "prometheus and alertmanager already installed"
    return
  fi
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by order-service scripts/deps.sh during apt-get install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created=1
  fi
  log "installing ${packages[*]}"
  local status=0
  apt_install "${packages[@]}" || status=$?
  if [ "$created" = 1 ]; then
    rm -f "$policy"
  fi
  hash -r
  return "$status"
}

# Debian's docker-compose (1.29), used to validate docker-compose.yaml; the
# `config` command needs no Docker engine.
ensure_docker_compose() {
  if command -v docker-compose >/dev/null 2>&1; then
    log "docker-compose already installed ($(command -v docker-compose))"
    return
  fi
  log "installing docker-compose"
  apt_install docker-compose
  hash -r
}

# Redis carries Socket.IO emits between instances (REDIS_URL); the tests
# with two instances use it. Nothing is persisted: it only relays pub/sub.
ensure_redis() {
  if port_open "$REDIS_PORT"; then
    log "Redis already listening on $REDIS_PORT"
    return
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server"
    apt_install redis-server
    # The package may have started its own daemon on the default port.
    if port_open "$REDIS_PORT"; then
      return
    fi
  fi
  log "starting Redis on $REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
  wait_port "$REDIS_PORT" Redis 60
}

# SecantusDB's Rust server (`secantusd-rs`, the same wire protocol and flags),
# for the outbox benchmark (scripts/bench.sh --server rs): a cargo build of
# about ten minutes, so the tests keep to the Python server.
SECANTUS_RS_VERSION="0.5.3-beta.196"
ensure_secantus_rs() {
  if command -v secantusd-rs >/dev/null 2>&1; then
    log "secantusd-rs already installed ($(command -v secantusd-rs))"
    return
  fi
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  log "building secantusd-rs $SECANTUS_RS_VERSION (cargo install, about ten minutes)"
  # Its own temporary target directory (not the project's, whose lock a
  # test build may hold) and the crate's own Cargo.lock.
  env -u CARGO_TARGET_DIR cargo install --quiet --locked secantus-mdb \
    --version "$SECANTUS_RS_VERSION" --ignore-rust-version
  hash -r
}

# The rediss:// test starts its own TLS-only redis-server, with certificates
# openssl makes, whatever Redis is already listening on the usual port.
ensure_redis_tls() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

# The realtime tests drive the reference Socket.IO client on Node.js.
ensure_node() {
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    return
  fi
  log "installing nodejs and npm"
  apt_install nodejs npm
}

if [ "${1:-}" = --broker-only ]; then
  ensure_rabbitmq
  log "ready: amqp://127.0.0.1:$RABBITMQ_PORT"
  exit 0
fi

# Check the optional names before starting anything.
for extra in "$@"; do
  case "$extra" in
    prometheus | docker-compose | redis-tls | secantus-rs) ;;
    *)
      log "unknown argument: $extra (expected: prometheus, docker-compose, redis-tls, secantus-rs)"
      exit 2
      ;;
  esac
done

mkdir -p "$DATA_DIR"
ensure_rabbitmq
ensure_mongo
ensure_redis
ensure_node
log "ready: mongodb://127.0.0.1:$MONGO_PORT amqp://127.0.0.1:$RABBITMQ_PORT redis://127.0.0.1:$REDIS_PORT"

for extra in "$@"; do
  case "$extra" in
    prometheus) ensure_prometheus ;;
    docker-compose) ensure_docker_compose ;;
    redis-tls) ensure_redis_tls ;;
    secantus-rs) ensure_secantus_rs ;;
  esac
done
