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
use edgedesk_dialog::Engine;
use edgedesk_nlu::ActiveModel;
use crate::store::Store;
pub use metrics::Metrics;

/// Shared by all handlers and background tasks.
pub struct AppState {
    pub config: Config,
    pub engine: Engine,
    pub model: Arc<ActiveModel>,
    /// Versions on disk, updates and rollbacks of `model`.
    pub models: Arc<crate::models::ModelManager>,
    pub store: Store,
    pub metrics: Metrics,
    /// One permit per open chat connection (`server.max_connections`).
    pub connections: Arc<Semaphore>,
    /// Live sessions: id → (claim number, token that closes the connection
    /// holding it), so a reconnect (e.g. a second tab) takes the session over.
    pub live: Mutex<HashMap<String, LiveSession>>,
    pub claims: AtomicU64,
    pub shutdown: CancellationToken,
    /// Tracks chat connections so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Woken when a commit adds outbox events (the uplink drains them).
    pub outbox_notify: Arc<tokio::sync::Notify>,
    pub started: std::time::Instant,
    /// Set by the uplink: conversations whose visitor is typing to an agent
    /// (bounded 64; when full, typing signals are dropped — they are ephemeral).
    pub typing_tx: std::sync::OnceLock<tokio::sync::mpsc::Sender<String>>,
}

/// A connection's hold on a session.
#[derive(Debug, Clone)]
pub struct Claim {
    pub number: u64,
    pub token: CancellationToken,
}

/// What a human agent does to a conversation, delivered to the connection
/// that holds it (or applied to the store when the visitor is away).
#[derive(Debug, Clone, PartialEq)]
pub enum AgentAction {
    Joined {
        agent: String,
    },
    Message {
        agent: String,
        text: String,
    },
    Left,
    Closed,
    Typing,
    /// The branch's link to the cloud dropped / came back (shown to visitors
    /// who are with an agent; nothing is stored).
    LinkDown,
    LinkUp,
}

/// An agent action for a live connection; `done` reports whether it was stored.
pub struct AgentEvent {
    pub conversation: String,
    pub action: AgentAction,
    pub done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// A live session: who holds it, how to close it, how to reach it.
pub struct LiveSession {
    pub number: u64,
    pub token: CancellationToken,
    /// Bounded (16); when full, senders wait: agent actions are never dropped.
    pub agent_tx: tokio::sync::mpsc::Sender<AgentEvent>,
}

impl AppState {
    /// Register `session` as held by a new connection, closing any older holder.
    pub fn claim_session(&self, session: &str) -> (Claim, tokio::sync::mpsc::Receiver<AgentEvent>) {
        let claim = Claim {
            number: self.claims.fetch_add(1, Ordering::Relaxed),
            token: CancellationToken::new(),
        };
        let (agent_tx, agent_rx) = tokio::sync::mpsc::channel(16);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let entry = LiveSession {
            number: claim.number,
            token: claim.token.clone(),
            agent_tx,
        };
        if let Some(previous) = live.insert(session.to_owned(), entry) {
            previous.token.cancel();
        }
        (claim, agent_rx)
    }

    /// Tell every live connection that the cloud link went down or up.
    pub fn broadcast_link(&self, up: bool) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for l in live.values() {
            let action = if up {
                AgentAction::LinkUp
            } else {
                AgentAction::LinkDown
            };
            let _ = l.agent_tx.try_send(AgentEvent {
                conversation: String::new(),
                action,
                done: None,
            });
        }
    }

    /// The channel to the connection holding `session`, if any.
    pub fn live_sender(&self, session: &str) -> Option<tokio::sync::mpsc::Sender<AgentEvent>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .map(|l| l.agent_tx.clone())
    }

    /// Forget `session` if `claim` still holds it.
    pub fn release_session(&self, session: &str, claim: &Claim) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(session).is_some_and(|l| l.number == claim.number) {
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
