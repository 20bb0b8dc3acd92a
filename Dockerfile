# syntax=docker/dockerfile:1
#
# The Order Service and the Flutterwave simulator in one small image.
#   docker build -t gigconnect/order-service:local .
#   docker run --rm -p 4006:4006 gigconnect/order-service:local            # order-service
#   docker run --rm -p 4010:4010 gigconnect/order-service:local \
#     flutterwave-sim --addr 0.0.0.0:4010                                   # the simulator
# docker-compose.yaml builds it for both services.

# ---- builder -----------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# 1. Dependencies only: the manifests, the lock file and empty targets, so this
#    layer (the slow part) is rebuilt only when a manifest or Cargo.lock changes.
#    Every workspace member's manifest must be here (cargo loads them all): a
#    new member in Cargo.toml needs a COPY line and a stub below, and in step 2.
COPY Cargo.toml Cargo.lock ./
COPY outbox/Cargo.toml outbox/Cargo.toml
COPY flutterwave-sim/Cargo.toml flutterwave-sim/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
COPY chaos/Cargo.toml chaos/Cargo.toml
RUN mkdir -p src outbox/src flutterwave-sim/src bench/src chaos/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && touch outbox/src/lib.rs \
 && echo 'fn main() {}' > flutterwave-sim/src/main.rs && touch flutterwave-sim/src/lib.rs \
 && echo 'fn main() {}' > bench/src/main.rs && touch bench/src/lib.rs \
 && echo 'fn main() {}' > chaos/src/main.rs \
 && cargo build --release --locked -p order-service -p flutterwave-sim \
 && rm -rf src outbox/src flutterwave-sim/src bench/src chaos/src

# 2. The real sources. touch: the copied files may be older than the stub
#    builds above, and cargo must not take the stubs for up to date.
COPY src src
COPY outbox outbox
COPY flutterwave-sim flutterwave-sim
COPY bench bench
COPY chaos chaos
RUN find src outbox/src flutterwave-sim/src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p order-service -p flutterwave-sim \
 && cp target/release/order-service target/release/flutterwave-sim /usr/local/bin/

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to Flutterwave, Cloudinary, managed MongoDB/RabbitMQ.
# curl: only for the container health checks (GET /health/live, /health/ready).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin app
COPY --from=builder /usr/local/bin/order-service /usr/local/bin/flutterwave-sim /usr/local/bin/
USER 10001:10001
ENV PORT=4006 \
    RUST_LOG=info,lapin=warn
EXPOSE 4006
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:4006/health/live >/dev/null || exit 1
CMD ["order-service"]
