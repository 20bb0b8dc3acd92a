#!/usr/bin/env bash
# Property-based fuzzing of the RUNNING service from its own OpenAPI document
# (GET /api-docs/openapi.json) with schemathesis: every operation gets
# generated requests (valid and invalid), authenticated with freshly minted
# gateway, user, webhook and admin credentials; every response must be a
# non-5xx that conforms to the document (status, content type, headers,
# body schema). Exits non-zero on any failure.
#
#   scripts/fuzz.sh                              the CI budget (fixed seed)
#   FUZZ_SEED=$RANDOM FUZZ_MAX_EXAMPLES=300 scripts/fuzz.sh     a longer campaign
#   FUZZ_SEED=$RANDOM FUZZ_MAX_TIME=3600 scripts/fuzz.sh        an hour of it
#
# Settings (environment):
#   FUZZ_MAX_EXAMPLES  examples per operation and phase (default 50)
#   FUZZ_SEED          hypothesis seed (default 20261127): same seed, same requests
#   FUZZ_PHASES        schemathesis phases (default examples,coverage,fuzzing)
#   FUZZ_MAX_TIME      seconds: keep fuzzing until they are spent (unset: stop
#                      after the examples)
#   FUZZ_PROFILE       debug (default) or release: which build to run
#   FUZZ_REPORT_DIR    where the JUnit report and the HAR of every request go
#                      (default $CARGO_TARGET_DIR/fuzz-report)
#   FUZZ_VENV          the virtualenv holding schemathesis
#                      (default /var/cache/order-service/fuzz-venv)
#
# It starts the local dependencies (scripts/deps.sh), the Flutterwave
# simulator and the service on free ports, each run with its own database
# and exchange prefix, and stops both processes at the end, whatever happens.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/order-service/target}"

SCHEMATHESIS_VERSION="4.32.5"
# Only to drop the run's database afterwards.
PYMONGO_VERSION="4.20.1"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-50}"
SEED="${FUZZ_SEED:-20261127}"
PHASES="${FUZZ_PHASES:-examples,coverage,fuzzing}"
PROFILE="${FUZZ_PROFILE:-debug}"
REPORT_DIR="${FUZZ_REPORT_DIR:-$CARGO_TARGET_DIR/fuzz-report}"
VENV="${FUZZ_VENV:-/var/cache/order-service/fuzz-venv}"
CHECKS="not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method"

LOG_PREFIX=fuzz
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

scripts/deps.sh

# schemathesis, pinned, in its own virtualenv (never in the system Python).
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION" ||
  ! "$VENV/bin/python" -c "import pymongo, sys; sys.exit(pymongo.version != '$PYMONGO_VERSION')" 2>/dev/null; then
  log "installing schemathesis $SCHEMATHESIS_VERSION and pymongo $PYMONGO_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "pymongo==$PYMONGO_VERSION"
fi

case "$PROFILE" in
  release)
    cargo build --release -p order-service -p flutterwave-sim --bins
    BIN="$CARGO_TARGET_DIR/release"
    ;;
  debug)
    # The test build makes both binaries with the tests' feature set, so
    # after scripts/test.sh (as in .ci/run) this compiles nothing.
    cargo test --workspace --no-run --quiet
    BIN="$CARGO_TARGET_DIR/debug"
    ;;
  *)
    log "FUZZ_PROFILE must be debug or release, not $PROFILE"
    exit 2
    ;;
esac

RUN_ID="$(python3 -c 'import uuid; print(uuid.uuid4().hex[:12])')"
MONGO_URI="mongodb://127.0.0.1:${MONGO_PORT:-27017}/?directConnection=true"
DB_NAME="order_fuzz_$RUN_ID"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/order-fuzz.XXXXXX")"
SIM_PORT="$(free_port)"
PORT="$(free_port)"
JWT_SECRET="fuzz-jwt-$RUN_ID"
GATEWAY_SECRET="fuzz-gateway-$RUN_ID"
WEBHOOK_HASH="fuzz-webhook-$RUN_ID"
ADMIN_TOKEN="fuzz-admin-$RUN_ID"
FLW_KEY="FLWSECK_TEST-fuzz-$RUN_ID"

sim_pid=""
svc_pid=""
cleanup() {
  local status=$?
  for pid in "$svc_pid" "$sim_pid"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [ "$status" -ne 0 ] && [ -f "$WORK/service.log" ]; then
    log "last lines of the service log:"
    tail -n 40 "$WORK/service.log" >&2 || true
  fi
  rm -rf "$WORK"
  # The run's review queues (its exchanges hold nothing once these are gone).
  if command -v rabbitmqctl >/dev/null 2>&1; then
    rabbitmqctl -q list_queues name 2>/dev/null | grep "^fuzz-$RUN_ID-" |
      while read -r queue; do rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true; done
  fi
  "$VENV/bin/python" -c 'import pymongo, sys
pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000).drop_database(sys.argv[2])' \
    "$MONGO_URI" "$DB_NAME" 2>/dev/null || log "could not drop database $DB_NAME"
  exit "$status"
}
trap cleanup EXIT
# Ctrl-C or a TERM still stops both processes and drops the database.
trap 'exit 130' INT TERM

log "starting the Flutterwave simulator on 127.0.0.1:$SIM_PORT"
"$BIN/flutterwave-sim" --addr "127.0.0.1:$SIM_PORT" --secret-key "$FLW_KEY" \
  >"$WORK/sim.log" 2>&1 &
sim_pid=$!

log "starting order-service on 127.0.0.1:$PORT (database $DB_NAME)"
env NODE_ENV=test PORT="$PORT" \
  DATABASE_URL="mongodb://127.0.0.1:${MONGO_PORT:-27017}/$DB_NAME?directConnection=true" \
  RABBITMQ_ENDPOINT="amqp://guest:guest@127.0.0.1:${RABBITMQ_PORT:-5672}/%2f" \
  AMQP_EXCHANGE_PREFIX="fuzz-$RUN_ID-" \
  FLUTTERWAVE_API_URL="http://127.0.0.1:$SIM_PORT/v3" FLUTTERWAVE_SECRET_KEY="$FLW_KEY" \
  FLUTTERWAVE_WEBHOOK_HASH="$WEBHOOK_HASH" JWT_TOKEN="$JWT_SECRET" \
  GATEWAY_JWT_TOKEN="$GATEWAY_SECRET" ADMIN_TOKEN="$ADMIN_TOKEN" \
  CLIENT_URL="http://client.fuzz" \
  RATE_LIMIT_PER_USER_PER_MIN=0 RATE_LIMIT_PER_IP_PER_MIN=0 \
  RUST_LOG="${RUST_LOG:-warn}" \
  "$BIN/order-service" >"$WORK/service.log" 2>&1 &
svc_pid=$!

for _ in $(seq 240); do
  if port_open "$PORT" && port_open "$SIM_PORT" &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health/ready")" = 200 ]; then
    break
  fi
  kill -0 "$svc_pid" 2>/dev/null || { log "order-service exited"; exit 1; }
  kill -0 "$sim_pid" 2>/dev/null || { log "the simulator exited"; exit 1; }
  sleep 0.5
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health/ready")" = 200 ] ||
  { log "order-service did not become ready"; exit 1; }

# HS256 tokens minted with the Python standard library, as the gateway and
# the auth service would: the routes behind them are exercised for real.
jwt() { # jwt SECRET CLAIMS_JSON
  python3 -c 'import base64, hashlib, hmac, sys
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
msg = b64(b"{\"alg\":\"HS256\",\"typ\":\"JWT\"}") + "." + b64(sys.argv[2].encode())
print(msg + "." + b64(hmac.new(sys.argv[1].encode(), msg.encode(), hashlib.sha256).digest()))' "$1" "$2"
}
NOW="$(date +%s)"
GATEWAY_TOKEN="$(jwt "$GATEWAY_SECRET" '{"id":"order","iat":'"$NOW"'}')"
USER_TOKEN="$(jwt "$JWT_SECRET" '{"id":1,"username":"fuzzer","email":"fuzzer@example.com","iat":'"$NOW"'}')"

# Orders in every state on both sides, payable transactions and
# notifications, so that generated ids often name something real.
FUZZ_BASE="http://127.0.0.1:$PORT" FUZZ_SIM="http://127.0.0.1:$SIM_PORT" \
  FUZZ_JWT_SECRET="$JWT_SECRET" FUZZ_GATEWAY_SECRET="$GATEWAY_SECRET" \
  FUZZ_USER=fuzzer FUZZ_RUN_ID="$RUN_ID" FUZZ_CONFIG="$WORK/schemathesis.toml" \
  python3 scripts/fuzz-seed.py

mkdir -p "$REPORT_DIR"
log "schemathesis $SCHEMATHESIS_VERSION: seed $SEED, up to $MAX_EXAMPLES examples per operation and phase ($PHASES)"
started=$SECONDS
status=0
extra=()
if [ -n "${FUZZ_MAX_TIME:-}" ]; then
  extra+=(--max-time "$FUZZ_MAX_TIME")
fi
"$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" \
  run "http://127.0.0.1:$PORT/api-docs/openapi.json" \
  --checks "$CHECKS" \
  --phases "$PHASES" \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers 1 \
  --request-timeout 60 \
  --suppress-health-check too_slow,filter_too_much,data_too_large \
  --generation-database none \
  --report junit,har --report-dir "$REPORT_DIR" --report-har-path "$REPORT_DIR/requests.har" \
  --output-truncate false \
  -H "gatewaytoken: $GATEWAY_TOKEN" \
  -H "Authorization: Bearer $USER_TOKEN" \
  -H "verif-hash: $WEBHOOK_HASH" \
  -H "x-admin-token: $ADMIN_TOKEN" \
  "${extra[@]}" || status=$?
log "schemathesis finished in $((SECONDS - started)) s with status $status (reports in $REPORT_DIR)"
# What the service answered, so a run that only ever met 401s or 404s shows.
python3 - "$REPORT_DIR/requests.har" <<'PY' || true
import collections, json, sys
entries = json.load(open(sys.argv[1]))["log"]["entries"]
statuses = collections.Counter(e["response"]["status"] for e in entries)
print(f"fuzz: {len(entries)} requests; by status: "
      + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())), file=sys.stderr)
PY

if ! kill -0 "$svc_pid" 2>/dev/null; then
  log "order-service died during the run"
  status=1
fi
exit "$status"
