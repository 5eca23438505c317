//! HTTP and WebSocket transport of the node (axum), nothing else.
//!
//! Routes: `/` kiosk page (embedded assets), `/ws` chat ([`ws`]), `/healthz`,
//! `/readyz`, `/metrics`. What a chat frame means is decided by the session
//! service ([`crate::session`]); this module moves bytes and enforces limits.

pub mod assets;
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

async fn metrics_text(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
}
