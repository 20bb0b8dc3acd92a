//! Builds the application (database, broker, relay, router) and runs it
//! until a shutdown signal: stop accepting, finish in-flight requests, let
//! the relay finish the round it holds, settle the reviews being consumed,
//! close the broker connection.

use crate::config::Config;
use crate::consumers::queues::QueueSet;
use crate::consumers::review::{self, ReviewConsumer, ReviewSettings};
use crate::http::{self, AppState, Services, auth::Auth};
use crate::notifications::Notifications;
use crate::orders::Orders;
use crate::orders::events::{Exchanges, REFUND_COMMAND};
use crate::payments::Payments;
use crate::payments::checkout::Checkout;
use crate::payments::flutterwave::Flutterwave;
use crate::payments::reconcile::Reconciler;
use crate::payments::refund::RefundHandler;
use crate::payments::reverify::{ReverifyHandler, VERIFY_COMMAND};
use crate::realtime::Realtime;
use crate::telemetry::metrics::Metrics;
use crate::uploads::Uploads;
use crate::webhooks::flutterwave::WebhookReceiver;
use lapin::ExchangeKind;
use mongodb::Client;
use mongodb::options::ClientOptions;
use outbox::Destination;
use outbox::store::OutboxConfig;
use outbox::{Broker, BrokerConfig, ExchangeSpec, Inbox, Outbox, Relay, RelayConfig, Topology};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Database(#[from] mongodb::error::Error),
    #[error("outbox schema: {0}")]
    Outbox(#[from] outbox::Error),
    #[error("order schema: {0}")]
    Orders(#[from] crate::orders::OrderError),
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("payment client: {0}")]
    Payments(#[from] crate::payments::flutterwave::ProviderError),
    #[error("realtime: {0}")]
    Realtime(#[from] crate::realtime::RealtimeError),
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    relay: Relay,
    reviews: ReviewConsumer,
    reconciler: Reconciler,
}

impl Application {
    /// Connects and prepares everything; binds `config.port` (0 = any free port).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        Self::build_with_metrics(config, Metrics::new()).await
    }

    /// As [`Application::build`], with a registry made earlier (the log
    /// shipper counts its drops in it before the application exists).
    pub async fn build_with_metrics(
        config: Config,
        metrics: Metrics,
    ) -> Result<Self, StartupError> {
        let mut options = ClientOptions::parse(config.database_url.expose()).await?;
        options.app_name = Some("order-service".into());
        options.server_selection_timeout = Some(Duration::from_secs(10));
        let client = Client::with_options(options)?;
        let db = client.database(&config.database_name);

        let outbox = Outbox::with_config(
            &db,
            OutboxConfig {
                retention: config.outbox_retention,
                ..OutboxConfig::default()
            },
        );
        outbox.ensure_schema().await?;
        let inbox = Inbox::new(&db, config.inbox_retention);
        inbox.ensure_schema().await?;

        let exchanges = Exchanges::new(&config.exchange_prefix);
        let review_queues = review::queues(&config.exchange_prefix);
        let broker = broker(&config, &exchanges, &review_queues);
        let relay = Relay::new(
            outbox.clone(),
            RelayConfig {
                instance_id: config.instance_id.clone(),
                max_attempts: config.outbox_max_attempts,
                lease: config.outbox_lease,
                poll_interval: config.outbox_poll_interval,
                scan_limit: config.outbox_scan_limit,
                concurrency: config.outbox_concurrency,
                rounds_in_flight: config.outbox_rounds_in_flight,
                per_aggregate: config.outbox_per_aggregate,
                watch_changes: config.outbox_watch_changes,
                ..RelayConfig::default()
            },
        )
        .with_broker(broker.clone())
        .with_observer(Arc::new(metrics.clone()));

        let orders = Orders::new(
            client.clone(),
            &db,
            outbox.clone(),
            exchanges,
            config.client_url.clone(),
            config.currency.clone(),
        )
        .with_waker(relay.waker());
        orders.repository().ensure_schema(&db).await?;
        let flutterwave = Flutterwave::new(
            &config.flutterwave_api_url,
            config.flutterwave_secret_key.clone(),
            config.flutterwave_timeout,
            &config.flutterwave_limits,
        )?
        .with_metrics(metrics.clone());
        let auth = Arc::new(Auth::new(&config.jwt_token, &config.gateway_jwt_token));
        // Redis channels carry the deployment's prefix, like its exchanges.
        let realtime =
            Realtime::start(auth.clone(), config.redis.as_ref(), &config.exchange_prefix).await?;
        let relay = relay
            .with_handler(
                REFUND_COMMAND,
                Arc::new(RefundHandler::new(
                    flutterwave.clone(),
                    orders.clone(),
                    config.refund_recheck,
                )),
            )
            .with_handler(
                VERIFY_COMMAND,
                Arc::new(ReverifyHandler::new(flutterwave.clone(), orders.clone())),
            )
            .with_handler(Destination::SOCKET_HANDLER, Arc::new(realtime.emitter()));
        let webhooks = WebhookReceiver::new(
            client.clone(),
            inbox.clone(),
            outbox.clone(),
            orders.repository().clone(),
            Some(relay.waker()),
        );

        let reviews = ReviewConsumer::new(
            orders.clone(),
            inbox.clone(),
            review_queues,
            ReviewSettings {
                prefetch: config.review_prefetch,
                max_retries: config.review_max_retries,
                retry_delay: config.review_retry_delay,
            },
        )
        .with_metrics(metrics.clone());

        let reconciler = Reconciler::new(
            &db,
            flutterwave.clone(),
            orders.clone(),
            config.reconcile.clone(),
        )
        .with_metrics(metrics.clone());
        reconciler.ensure_schema(&db).await?;
        let listener = TcpListener::bind(("0.0.0.0", config.port)).await?;
        let state = AppState::new(Services {
            auth,
            notifications: Notifications::new(
                client.clone(),
                orders.repository().clone(),
                outbox.clone(),
                Some(relay.waker()),
            ),
            checkout: Checkout::new(
                flutterwave.clone(),
                orders.clone(),
                config.client_url.clone(),
                config.checkout_session_minutes,
            ),
            payments: Payments::new(flutterwave, orders.clone()),
            uploads: Uploads::new(config.cloudinary.clone()),
            webhooks,
            config: Arc::new(config),
            db,
            orders,
            outbox,
            broker,
            metrics,
            realtime,
        });
        Ok(Self {
            listener,
            state,
            relay,
            reviews,
            reconciler,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains in order.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let cancel = CancellationToken::new();
        let broker = self.state.broker.clone();
        let keeper = tokio::spawn(keep_connected(broker.clone(), cancel.clone()));
        let relay = self.relay.start(cancel.child_token());
        let reviews = self.reviews.start(
            broker.clone(),
            format!("{} reviews", self.state.config.instance_id),
            cancel.clone(),
        );
        let reconciler = tokio::spawn(self.reconciler.run(cancel.child_token()));
        let realtime = self.state.realtime.clone();
        let router = http::router(self.state);
        tracing::info!(
            port = self.listener.local_addr()?.port(),
            "order service listening"
        );
        // The peer address feeds the per-IP rate limit (http::rate_limit).
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = axum::serve(self.listener, service)
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Open sockets (and their pending long polls) would hold the
                // drain up; closed, their clients reconnect to another instance.
                realtime.close().await;
            })
            .await;
        tracing::info!("HTTP stopped; finishing the relay rounds in flight");
        relay.shutdown().await;
        cancel.cancel();
        let _ = keeper.await;
        let _ = reconciler.await;
        // The consumer settles the reviews in hand (or leaves them to be
        // redelivered) before the connection it uses goes away.
        let _ = reviews.await;
        broker.close().await;
        // Last, the spans of everything above still waiting for export.
        crate::telemetry::shutdown().await;
        served
    }
}

/// Exchanges and queues the service needs; declared on every connect.
/// The supervised broker connection with the service's whole topology.
pub(crate) fn broker(config: &Config, exchanges: &Exchanges, reviews: &QueueSet) -> Broker {
    Broker::new(BrokerConfig {
        uri: config.rabbitmq_endpoint.expose().to_string(),
        connection_name: format!("order-service {}", config.instance_id),
        connect_timeout: Duration::from_secs(5),
        topology: topology(exchanges, reviews),
    })
}

fn topology(exchanges: &Exchanges, reviews: &QueueSet) -> Topology {
    let mut specs: Vec<ExchangeSpec> = [
        &exchanges.seller_updates,
        &exchanges.buyer_updates,
        &exchanges.order,
    ]
    .into_iter()
    .map(|name| ExchangeSpec {
        name: name.clone(),
        kind: ExchangeKind::Direct,
    })
    .collect();
    specs.push(reviews.exchange_spec());
    Topology {
        exchanges: specs,
        queues: reviews.queue_specs(),
    }
}

/// Keeps the broker connection up even when nothing is published, so that
/// readiness tells the truth and the first event after an outage goes out
/// without waiting for a reconnect.
async fn keep_connected(broker: Broker, cancel: CancellationToken) {
    use backon::BackoffBuilder;
    let fresh = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = fresh();
    while !cancel.is_cancelled() {
        let pause = match broker.publish_channel().await {
            Ok(_) => {
                backoff = fresh();
                Duration::from_secs(1)
            }
            Err(e) => {
                tracing::warn!(error = %e, "RabbitMQ unreachable; retrying");
                backoff.next().unwrap_or(Duration::from_secs(10))
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
