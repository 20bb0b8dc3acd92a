//! Fault injection: what can go wrong, and the per-route guard that counts calls, injects faults and checks auth.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::routes::AppState;
use crate::state::State as Ledger;
use crate::{Simulator, wire};

/// Faults applied to `/v3` API requests. Replaced wholesale by `Simulator::set_faults`
/// or `PUT /__sim/faults`; `Faults::default()` means a healthy Flutterwave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// The next N matching requests answer `fail_status`.
    pub fail_next: u32,
    /// Status for `fail_next`; 0 means 503.
    pub fail_status: u16,
    /// Every matching request answers this until cleared ("Flutterwave is down").
    pub fail_all_status: Option<u16>,
    /// `Retry-After` seconds sent with 429 answers; `None` means 1.
    pub retry_after_secs: Option<u64>,
    /// Delay added before answering (faulted answers included).
    pub latency_ms: u64,
    /// Never answer (until the server shuts down).
    pub hang: bool,
    /// The next N refunds are applied and recorded, then the answer is withheld so the
    /// client times out not knowing the refund went through. Ignores `only`.
    pub refund_drop_response_next: u32,
    /// Refunds applied while this is set start `pending` and turn
    /// `completed` once they have been looked up this many times (as a
    /// bank-routed refund settles later). Ignores `only`.
    pub refund_pending_lookups: u32,
    /// Refunds held pending by `refund_pending_lookups` end `failed`
    /// instead of `completed` (the bank refused them).
    pub refund_pending_then_fails: bool,
    /// Restrict the other faults to one operation.
    pub only: Option<Operation>,
}

/// A simulated operation, used for call counting and the `only` fault filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Verify,
    VerifyByReference,
    /// `GET /v3/transactions`, the list (filtered by `tx_ref`, `status`).
    Transactions,
    Refund,
    RefundLookup,
    Payments,
    /// The hosted checkout page; a browser visits it, so it needs no auth and faults skip it.
    HostedPay,
}

impl Operation {
    fn is_api(self) -> bool {
        self != Operation::HostedPay
    }
}

/// What the guard must do to one request, decided under the lock so budgets are exact.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    latency: Duration,
    hang: bool,
    fail: Option<(StatusCode, u64)>,
}

impl Ledger {
    /// Counts the call and consumes the fault budget it triggers.
    pub(crate) fn admit(&mut self, op: Operation) -> FaultPlan {
        let c = &mut self.calls;
        match op {
            Operation::Verify => c.verify += 1,
            Operation::VerifyByReference => c.verify_by_reference += 1,
            Operation::Transactions => c.transactions += 1,
            Operation::Refund => c.refund += 1,
            Operation::RefundLookup => c.refund_lookup += 1,
            Operation::Payments => c.payments += 1,
            Operation::HostedPay => c.hosted_pay += 1,
        }
        c.total += 1;

        let f = &mut self.faults;
        if !op.is_api() || f.only.is_some_and(|only| only != op) {
            return FaultPlan::default();
        }
        let retry_after = f.retry_after_secs.unwrap_or(1);
        let fail = if let Some(status) = f.fail_all_status {
            Some(status)
        } else if f.fail_next > 0 {
            f.fail_next -= 1;
            Some(f.fail_status)
        } else {
            None
        };
        FaultPlan {
            latency: Duration::from_millis(f.latency_ms),
            hang: f.hang,
            fail: fail.map(|s| (fault_status(s), retry_after)),
        }
    }
}

/// Anything that is not an error status would make a "fault" look like success.
fn fault_status(code: u16) -> StatusCode {
    StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

fn fault_message(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "Rate limit exceeded, please retry later",
        500 => "An unexpected error occurred, please try again",
        502 => "Bad gateway",
        503 => "Service temporarily unavailable, please try again",
        504 => "Gateway timeout",
        _ => "Simulated failure",
    }
}

fn fault_response(status: StatusCode, retry_after: u64) -> Response {
    let mut resp = wire::error(status, fault_message(status));
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    }
    resp
}

/// Parks the request until the server stops; the answer is only there to satisfy the type.
pub(crate) async fn hang(mut stop: watch::Receiver<bool>) -> Response {
    // A closed channel also means the server is gone.
    let _ = stop.wait_for(|stopped| *stopped).await;
    wire::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Simulator is shutting down",
    )
}

fn authorized(headers: &HeaderMap, secret_key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| key.trim() == secret_key)
}

/// One merchant API request counted in `in_flight` until it is answered
/// or its caller goes away.
struct InFlight(Simulator);

impl InFlight {
    /// Counts the request in `state`, the simulator's ledger the caller
    /// already holds locked.
    fn enter(state: &mut Ledger, sim: &Simulator) -> Self {
        state.in_flight += 1;
        state.calls.peak_in_flight = state.calls.peak_in_flight.max(state.in_flight);
        Self(sim.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

/// Faults come before auth: when Flutterwave is down, a bad key does not get a 401 either.
pub(crate) async fn guard(
    State((app, op)): State<(AppState, Operation)>,
    req: Request,
    next: Next,
) -> Response {
    // One lock for the count, the fault budget and the in-flight count.
    let (plan, _in_flight) = {
        let mut state = app.sim.lock();
        let plan = state.admit(op);
        let in_flight = op.is_api().then(|| InFlight::enter(&mut state, &app.sim));
        (plan, in_flight)
    };
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    if plan.hang {
        return hang(app.stop.clone()).await;
    }
    if let Some((status, retry_after)) = plan.fail {
        return fault_response(status, retry_after);
    }
    if op.is_api() && !authorized(req.headers(), app.sim.secret_key()) {
        return wire::error(StatusCode::UNAUTHORIZED, "Invalid authorization key");
    }
    next.run(req).await
}
