//! The controller's HTTP side: the operators' REST API ([`api`]), the
//! agents' console and its WebSocket ([`console`]), and `/healthz` and
//! `/metrics`. Handlers share one [`Http`] of narrow handles; none of them
//! reaches the MQTT transport.

pub mod api;
pub mod console;
pub mod forward;
pub mod listen;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use edgedesk_common::sync::ModelEndpoint;

use crate::accounts::LoginLimiter;
use crate::broker::Credentials;
use crate::config::ConsoleConfig;
use crate::downlink::Downlink;
use crate::handoff::Handoff;
use crate::metrics::Metrics;
use crate::rollouts::Rollouts;
use crate::store::Store;

/// What the handlers need.
pub struct Http {
    pub store: Store,
    pub downlink: Downlink,
    pub handoff: Handoff,
    pub rollouts: Rollouts,
    pub trainings: crate::training::Trainings,
    /// Share of agents' labels supervisors review (`learning.review_fraction`).
    pub review_fraction: f64,
    pub metrics: Arc<Metrics>,
    /// Broker logins (enrolment adds one).
    pub creds: Credentials,
    /// Node accounts on an external Mosquitto (`mqtt.external_provisioning`).
    pub dynsec: Option<Arc<crate::broker::dynsec::Dynsec>>,
    /// The controller's public keys, handed to nodes at enrolment.
    /// The controller's signing key and its sealing keys: enrolment answers
    /// with the current public halves.
    pub identity: edgedesk_common::envelope::Identity,
    pub sealing: Arc<crate::identity::Sealing>,
    pub admin_token: String,
    /// Bearer token for `/metrics` (empty: the admin token).
    pub metrics_token: String,
    /// Ids of agents whose account changed (disabled, new role): their
    /// console sockets check their session again at once.
    pub accounts_changed: tokio::sync::broadcast::Sender<String>,
    /// The URL nodes reach the controller at (`http.public_url`).
    pub public_url: String,
    /// Fingerprint of the certificate nodes pin; `None` over plain HTTP.
    pub ca_sha256: Option<String>,
    /// Broker address nodes are told to use.
    pub broker: (String, u16),
    /// CA certificate nodes pin for the broker's TLS; `None`: plain MQTT.
    pub broker_ca: Option<String>,
    /// Model-signing key and QUIC endpoint handed to nodes at enrolment.
    pub models: ModelEndpoint,
    pub console: ConsoleConfig,
    pub limiter: LoginLimiter,
    /// Proxies whose `X-Forwarded-For` names the client (`http.trusted_proxies`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// Every route of the controller.
pub fn router(state: Arc<Http>) -> axum::Router {
    let ops = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(state.clone());
    api::router(state.clone())
        .merge(ops)
        .merge(console::router(state))
}

/// What a standby replica serves while another one is active: `/healthz`
/// (it is alive); `/readyz` answering 503 with which replica is active, so
/// probes tell the active one apart; `/metrics` (its own, for the metrics
/// token `metrics.1`); and everything else forwarded to the active
/// controller ([`forward`]).
pub fn standby_router(
    waiting: tokio::sync::watch::Receiver<crate::store::election::Standby>,
    metrics: (Arc<crate::metrics::Metrics>, String),
    forward: Arc<forward::Forward>,
) -> axum::Router {
    use crate::store::election::Standby;
    let said = move || {
        let text = match &*waiting.borrow() {
            Standby::LedBy(who) if !who.is_empty() => {
                format!("standby: the active controller is {who}\n")
            }
            Standby::LedBy(_) => "standby: another controller is active\n".to_owned(),
            Standby::NoDatabase(e) => format!("standby: store unavailable: {e}\n"),
        };
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, text).into_response()
    };
    let (metrics, token) = metrics;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let said = said.clone();
                async move { said() }
            }),
        )
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| async move {
                metrics_for(&metrics, &token, &headers)
            }),
        )
        .fallback(forward::handle)
        .with_state(forward)
}

/// Readiness: 200 while the store answers, else 503 saying why (a replica
/// whose database is unreachable leaves the load balancer's rotation; its
/// liveness, `/healthz`, is unaffected, so it is not restarted for it).
async fn ready(State(s): State<Arc<Http>>) -> axum::response::Response {
    match s.store.ping().await {
        Ok(()) => "ready\n".into_response(),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        )
            .into_response(),
    }
}

/// Metrics for whoever holds the metrics token (`http.metrics_token`, else
/// the admin token): they describe the fleet and are not for the internet.
async fn metrics_text(
    State(s): State<Arc<Http>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let want = if s.metrics_token.is_empty() {
        &s.admin_token
    } else {
        &s.metrics_token
    };
    metrics_for(&s.metrics, want, &headers)
}

/// `metrics` rendered for a request bearing the token `want`, else 401.
fn metrics_for(
    metrics: &crate::metrics::Metrics,
    want: &str,
    headers: &axum::http::HeaderMap,
) -> axum::response::Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if given.is_empty() || crate::store::sha256_hex(given) != crate::store::sha256_hex(want) {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            "metrics need a bearer token (http.metrics_token, or the admin token)\n",
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}
