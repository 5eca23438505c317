//! HTTP and WebSocket front of the node (axum).
//!
//! Routes: `/` kiosk page (embedded assets), `/ws` chat, `/healthz`, `/readyz`,
//! `/metrics`. [`AppState`] is shared by every handler; the chat connection
//! logic lives in [`ws`], the page in [`assets`].

pub mod assets;
pub mod metrics;
pub mod ws;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dialog::Engine;
use crate::nlu::ActiveModel;
use crate::store::Store;
pub use metrics::Metrics;

/// Shared by all handlers and background tasks.
pub struct AppState {
    pub config: Config,
    pub engine: Engine,
    pub model: Arc<ActiveModel>,
    pub store: Store,
    pub metrics: Metrics,
    /// One permit per open chat connection (`server.max_connections`).
    pub connections: Arc<Semaphore>,
    /// Live sessions: id → (claim number, token that closes the connection
    /// holding it), so a reconnect (e.g. a second tab) takes the session over.
    pub live: Mutex<HashMap<String, (u64, CancellationToken)>>,
    pub claims: AtomicU64,
    pub shutdown: CancellationToken,
    /// Tracks chat connections so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Woken when a commit adds outbox events (the uplink drains them).
    pub outbox_notify: Arc<tokio::sync::Notify>,
    pub started: std::time::Instant,
}

/// A connection's hold on a session.
#[derive(Debug, Clone)]
pub struct Claim {
    pub number: u64,
    pub token: CancellationToken,
}

impl AppState {
    /// Register `session` as held by a new connection, closing any older holder.
    pub fn claim_session(&self, session: &str) -> Claim {
        let claim = Claim {
            number: self.claims.fetch_add(1, Ordering::Relaxed),
            token: CancellationToken::new(),
        };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, previous)) =
            live.insert(session.to_owned(), (claim.number, claim.token.clone()))
        {
            previous.cancel();
        }
        claim
    }

    /// Forget `session` if `claim` still holds it.
    pub fn release_session(&self, session: &str, claim: &Claim) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(session).is_some_and(|(n, _)| *n == claim.number) {
            live.remove(session);
        }
    }

    pub fn is_live(&self, session: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(session)
    }
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
            let m = app.model.get();
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
