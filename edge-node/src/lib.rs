//! EdgeDesk edge node: kiosk chat answered locally.
//!
//! Data flow: a visitor's WebSocket frame ([`server`]) → NLU (`edgedesk-nlu`)
//! → the dialog state machine (`edgedesk-dialog`) → one SQLite transaction with the
//! messages, the session state and any outbox events ([`store`]) → replies.
//! [`run`] wires it together and returns a [`Node`]; `main.rs` only parses
//! arguments, sets up logging and signals.

pub mod cli;
pub mod config;
pub mod housekeeping;
pub mod models;
pub mod server;
pub mod store;
pub mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use edgedesk_dialog::kb::KbError;
use edgedesk_dialog::{self as dialog, Engine, EngineConfig, KnowledgeBase};
use crate::models::ModelManager;
use edgedesk_nlu::NluError;
use crate::server::{AppState, Metrics};
use crate::store::{Store, StoreError};

/// Why the node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Nlu(#[from] NluError),
    #[error(transparent)]
    Kb(#[from] KbError),
    #[error("cannot read knowledge base {path}: {source}")]
    KbRead {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

impl NodeError {
    /// Process exit code (sysexits.h): 64 usage/config, 65 bad data (bundle,
    /// knowledge base), 69 ONNX Runtime unavailable, 74 I/O (store, socket).
    pub fn exit_code(&self) -> i32 {
        match self {
            NodeError::Config(_) => 64,
            NodeError::Nlu(NluError::Runtime(_)) => 69,
            NodeError::Nlu(_) | NodeError::Kb(_) => 65,
            NodeError::KbRead { .. } => 66,
            NodeError::Store(_) | NodeError::Bind { .. } | NodeError::Serve(_) => 74,
        }
    }
}

/// A running node.
pub struct Node {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl Node {
    /// Wait until the node has shut down (after the shutdown token fires).
    pub async fn wait(self) -> Result<(), NodeError> {
        drop(self.state);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(NodeError::Serve(std::io::Error::other(e.to_string()))),
        }
    }
}

/// Load the model (through the model manager: the active kept version, else
/// the factory bundle) and the knowledge base.
pub fn load_engine(config: &Config) -> Result<(ModelManager, Engine), NodeError> {
    edgedesk_nlu::runtime::init(&config.nlu.onnxruntime_path)?;
    let manager = ModelManager::open(
        &config.models_dir(),
        config.models.keep,
        &config.nlu.bundle,
        config.nlu.sessions,
        config.nlu.confidence_threshold,
    )?;
    let model = manager.active.get();
    let kb = if config.dialog.knowledge_base.as_os_str().is_empty() {
        KnowledgeBase::builtin()
    } else {
        let path = &config.dialog.knowledge_base;
        let text = std::fs::read_to_string(path).map_err(|source| NodeError::KbRead {
            path: path.display().to_string(),
            source,
        })?;
        KnowledgeBase::parse(&text, &path.display().to_string())?
    };
    let handled = [
        dialog::BOOK_APPOINTMENT,
        dialog::LOST_CARD,
        dialog::HUMAN_AGENT,
        dialog::GOODBYE,
        "out_of_scope",
    ];
    let missing = kb.missing_answers(&model.manifest().labels, &handled);
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "knowledge base has no answer for these intents; visitors will be offered a person"
        );
    }
    let engine = Engine::new(
        Arc::new(kb),
        EngineConfig {
            max_reprompts: config.dialog.max_reprompts,
            opening_hour: config.dialog.opening_hour,
            closing_hour: config.dialog.closing_hour,
        },
    );
    Ok((manager, engine))
}

/// Start a node: verify and load the model, open the store, bind, serve.
/// Cancelling `shutdown` closes chat sockets (code 1001) and stops the node
/// within `server.shutdown_grace_secs`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Node, NodeError> {
    let cfg = config.clone();
    let (manager, engine) = tokio::task::spawn_blocking(move || load_engine(&cfg))
        .await
        .map_err(|e| NodeError::Serve(std::io::Error::other(e.to_string())))??;
    let model = manager.active.get();
    tracing::info!(
        model = %model.manifest().name,
        version = %model.manifest().version,
        threshold = model.threshold(),
        "model bundle verified and loaded"
    );
    let (store, store_thread) = Store::open(&config.store)?;
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: config.server.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(NodeError::Serve)?;
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let state = Arc::new(AppState {
        connections: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
        config,
        engine,
        model: manager.active.clone(),
        models: Arc::new(manager),
        store,
        metrics: Metrics::new(),
        live: Default::default(),
        claims: Default::default(),
        shutdown: shutdown.clone(),
        tasks: tokio_util::task::TaskTracker::new(),
        outbox_notify: Default::default(),
        started: std::time::Instant::now(),
        typing_tx: std::sync::OnceLock::new(),
    });
    tracing::info!(%addr, "edge node listening; kiosk page at http://{addr}/");
    let keeper = tokio::spawn(housekeeping::run(state.clone()));
    let uplink = state
        .config
        .cloud
        .enabled
        .then(|| tokio::spawn(uplink::run(state.clone())));
    let app = server::router(state.clone());
    let serve_state = state.clone();
    // Chat frames are small and latency-bound: no Nagle delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        // Chat sockets see the same token and close themselves; wait for them.
        serve_state.tasks.close();
        if tokio::time::timeout(grace, serve_state.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; dropping remaining connections");
        }
        let _ = keeper.await;
        if let Some(u) = uplink {
            let _ = u.await;
        }
        drop(serve_state);
        // The store thread flushes and exits once the last handle is gone.
        let _ = tokio::time::timeout(
            grace,
            tokio::task::spawn_blocking(move || store_thread.join()),
        )
        .await;
        tracing::info!("edge node stopped");
        served.map_err(NodeError::Serve)
    });
    Ok(Node { addr, state, task })
}
