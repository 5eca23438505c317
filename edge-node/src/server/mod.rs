//! HTTP and WebSocket transport of the node (axum), nothing else.
//!
//! Routes: `/` kiosk page (embedded assets), `/ws` chat ([`ws`]), `/healthz`,
//! `/readyz`, `/metrics`. What a chat frame means is decided by the session
//! service ([`crate::session`]); this module moves bytes and enforces limits.

pub mod assets;
pub mod listen;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::models::ModelManager;
use crate::session::Sessions;
use crate::store::Store;

/// What the handlers need.
pub struct AppState {
    pub server: ServerConfig,
    /// A held conversation ends after this long without a visitor message.
    pub idle_conversation: Duration,
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<Metrics>,
    /// For the readiness probe.
    pub store: Store,
    pub models: Arc<ModelManager>,
    /// One permit per open chat connection (`server.max_connections`).
    pub connections: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// Tracks chat connections so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// New sessions per client address.
    pub hellos: ws::HelloLimiter,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/style.css", get(assets::style))
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    if app.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    }
    match app.store.ping().await {
        Ok(()) => {
            let m = app.models.active.get();
            (
                StatusCode::OK,
                format!(
                    "ready: model {} {}\n",
                    m.manifest().name,
                    m.manifest().version
                ),
            )
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
    }
}

/// Whether `/metrics` may be answered: to the node's own host, or to a
/// bearer of the configured token (digests compared).
fn metrics_allowed(peer: std::net::IpAddr, token: &str, given: Option<&str>) -> bool {
    match given {
        Some(g) if !token.is_empty() => {
            use sha2::Digest;
            sha2::Sha256::digest(g.as_bytes()) == sha2::Sha256::digest(token.as_bytes())
        }
        _ => peer.is_loopback(),
    }
}

/// Metrics for the node's own host (loopback) or whoever holds
/// `server.metrics_token`: the kiosk port faces visitors, and metrics are
/// not for them.
async fn metrics_text(
    State(app): State<Arc<AppState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !metrics_allowed(peer.ip(), &app.server.metrics_token, given) {
        return (
            StatusCode::FORBIDDEN,
            "metrics are served to this host, or with server.metrics_token\n",
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::metrics_allowed;

    #[test]
    fn metrics_go_to_this_host_or_a_token_holder_only() {
        let (lan, local) = (
            "192.168.1.20".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
        );
        assert!(metrics_allowed(local, "", None));
        assert!(!metrics_allowed(lan, "", None), "a visitor on the LAN");
        assert!(
            !metrics_allowed(lan, "", Some("guess")),
            "no token configured"
        );
        assert!(!metrics_allowed(lan, "s3cret", Some("guess")));
        assert!(metrics_allowed(lan, "s3cret", Some("s3cret")));
        assert!(
            !metrics_allowed(local, "s3cret", Some("wrong")),
            "a wrong token is wrong everywhere"
        );
    }
}
