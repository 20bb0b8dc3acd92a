//! Local Flutterwave v3 simulator: real `/v3` paths and JSON shapes, fault injection and signed webhooks.
//!
//! Used in-process by integration tests, over HTTP by the chaos suite (`/__sim` control
//! routes), and as the `flutterwave-sim` binary for local runs. See README.md.

mod control;
mod error;
mod faults;
mod routes;
mod state;
mod webhook;
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::SimError;
pub use faults::{Faults, Operation};
pub use state::{
    CallCounts, NewTransaction, PaymentLink, Refund, Transaction, WebhookDelivery, WebhookTarget,
};
pub use webhook::{SignMode, WebhookOptions, signature};

use routes::AppState;
use state::State;

/// How a simulated customer pays a hosted link (`Simulator::pay_link`, `POST /__sim/pay/{tx_ref}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PayOptions {
    /// Defaults to the link's amount; set it to simulate an underpayment.
    pub amount: Option<f64>,
    /// Defaults to the link's currency.
    pub currency: Option<String>,
    /// Defaults to `"successful"`.
    pub status: Option<String>,
    /// Do not send the webhook at all, as when Flutterwave's delivery is lost.
    pub lose_webhook: bool,
    pub sign: SignMode,
    /// Send the webhook in the background after this delay, so it can arrive after the
    /// redirect / verify; `None` delivers it before `pay_link` returns.
    pub webhook_delay_ms: Option<u64>,
}

/// The simulated Flutterwave account. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    secret_key: String,
    state: Mutex<State>,
    http: reqwest::Client,
    /// Never signalled: hung requests on a bare `router()` wait until the client gives up.
    idle_stop: watch::Sender<bool>,
}

impl Simulator {
    /// API requests must carry `Authorization: Bearer <secret_key>`.
    pub fn new(secret_key: impl Into<String>) -> Self {
        // Webhook targets are local services; an ambient HTTP(S)_PROXY must not reroute them.
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            inner: Arc::new(Inner {
                secret_key: secret_key.into(),
                state: Mutex::new(State::default()),
                http,
                idle_stop: watch::channel(false).0,
            }),
        }
    }

    pub fn secret_key(&self) -> &str {
        &self.inner.secret_key
    }

    /// Binds `addr` (port 0 picks a free port) and serves in a background task until the
    /// handle is shut down or dropped.
    pub async fn start(self, addr: SocketAddr) -> std::io::Result<SimHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let app = self.build_router(stop_rx.clone());
        let mut shutdown = stop_rx;
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stopped| *stopped).await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "flutterwave-sim server failed");
            }
        });
        Ok(SimHandle {
            sim: self,
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The full app (`/v3` API and `/__sim` control routes) for embedding in another server.
    pub fn router(&self) -> Router {
        self.build_router(self.inner.idle_stop.subscribe())
    }

    fn build_router(&self, stop: watch::Receiver<bool>) -> Router {
        let app = AppState {
            sim: self.clone(),
            stop,
        };
        Router::new()
            .merge(routes::v3(&app))
            .merge(control::routes())
            .fallback(routes::not_found)
            .with_state(app)
    }

    /// A poisoned lock only means a test panicked mid-update; the ledger is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a transaction as if a customer had paid (or failed to); ids start at 1 000 001.
    pub fn add_transaction(&self, tx: NewTransaction) -> Transaction {
        self.lock().add_transaction(tx)
    }

    pub fn transaction(&self, id: u64) -> Option<Transaction> {
        self.lock().transactions.get(&id).cloned()
    }

    /// All transactions, oldest first.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.lock().transactions.values().cloned().collect()
    }

    /// Moves a transaction along, e.g. `pending` → `successful`, for flows that poll verify.
    pub fn set_transaction_status(
        &self,
        id: u64,
        status: impl Into<String>,
    ) -> Option<Transaction> {
        let mut state = self.lock();
        let tx = state.transactions.get_mut(&id)?;
        tx.status = status.into();
        Some(tx.clone())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn calls(&self) -> CallCounts {
        self.lock().calls
    }

    /// Every refund applied, including those whose answer a fault withheld.
    pub fn refunds(&self) -> Vec<Refund> {
        self.lock().refunds.clone()
    }

    pub fn payment_links(&self) -> Vec<PaymentLink> {
        self.lock().links.clone()
    }

    /// Every webhook POST attempted, oldest first.
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.lock().deliveries.clone()
    }

    pub fn set_webhook_target(&self, url: impl Into<String>, hash: impl Into<String>) {
        self.lock().webhook_target = Some(WebhookTarget {
            url: url.into(),
            hash: hash.into(),
        });
    }

    /// "Time passes": the latest link made for `tx_ref` stops taking
    /// payments now, as it would at the end of its `session_duration`.
    pub fn expire_payment_link(&self, tx_ref: &str) -> Result<(), SimError> {
        latest_link(&mut self.lock().links, tx_ref)?.expires_at = Some(Utc::now());
        Ok(())
    }

    /// "The customer pays the hosted link" for the latest link created for `tx_ref`,
    /// refused once the link has expired.
    /// Webhook failures do not fail the payment (Flutterwave charges regardless); they are
    /// logged and visible in `webhook_deliveries()`.
    pub async fn pay_link(&self, tx_ref: &str, opts: PayOptions) -> Result<Transaction, SimError> {
        let link = latest_link(&mut self.lock().links, tx_ref)?.clone();
        if link.expired(Utc::now()) {
            return Err(SimError::ExpiredPaymentLink(tx_ref.to_string()));
        }
        Ok(self.pay(&link, opts).await)
    }

    pub(crate) async fn pay(&self, link: &PaymentLink, opts: PayOptions) -> Transaction {
        let tx = {
            let mut state = self.lock();
            let tx = state.add_transaction(NewTransaction {
                tx_ref: link.tx_ref.clone(),
                amount: opts.amount.unwrap_or(link.amount),
                currency: opts.currency.unwrap_or_else(|| link.currency.clone()),
                status: opts.status.unwrap_or_else(|| "successful".into()),
                customer_email: link.customer_email.clone(),
                // Flutterwave's own label for a payer who gave no name.
                customer_name: link
                    .customer_name
                    .clone()
                    .unwrap_or_else(|| "Anonymous customer".into()),
                ..NewTransaction::default()
            });
            if let Some(l) = state.links.iter_mut().find(|l| l.token == link.token) {
                l.paid_tx_id = Some(tx.id);
            }
            tx
        };
        if opts.lose_webhook {
            return tx;
        }
        let webhook = WebhookOptions {
            sign: opts.sign,
            ..WebhookOptions::default()
        };
        match opts.webhook_delay_ms {
            None => self.send_webhook_logged(tx.id, webhook).await,
            Some(ms) => {
                let sim = self.clone();
                let id = tx.id;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    sim.send_webhook_logged(id, webhook).await;
                });
            }
        }
        tx
    }

    async fn send_webhook_logged(&self, tx_id: u64, opts: WebhookOptions) {
        if let Err(e) = self.send_webhook(tx_id, opts).await {
            tracing::warn!(tx_id, error = %e, "charge.completed webhook not delivered");
        }
    }
}

/// A running simulator. Dropping it (or `shutdown`) stops the server and releases hung requests.
#[derive(Debug)]
pub struct SimHandle {
    sim: Simulator,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The value for `FLUTTERWAVE_API_URL`, e.g. `http://127.0.0.1:43121/v3`.
    pub fn base_url(&self) -> String {
        format!("{}/v3", self.root_url())
    }

    /// Where the `/__sim` control routes live, e.g. `http://127.0.0.1:43121`.
    pub fn root_url(&self) -> String {
        // A wildcard bind is not an address a client can dial.
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn sim(&self) -> &Simulator {
        &self.sim
    }

    /// Stops accepting, releases hung requests and waits (up to 5 s) for open connections.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The latest link made for `tx_ref`.
fn latest_link<'a>(
    links: &'a mut [PaymentLink],
    tx_ref: &str,
) -> Result<&'a mut PaymentLink, SimError> {
    links
        .iter_mut()
        .rev()
        .find(|l| l.tx_ref == tx_ref)
        .ok_or_else(|| SimError::UnknownPaymentLink(tx_ref.to_string()))
}
