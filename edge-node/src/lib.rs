//! EdgeDesk edge node: kiosk chat answered locally.
//!
//! Data flow: a visitor's WebSocket frame ([`server`]) → the session service
//! ([`session`]): NLU on the inference pool ([`inference`], `edgedesk-nlu`) →
//! the dialog state machine (`edgedesk-dialog`) → one SQLite transaction with
//! the messages, the session state and any outbox events ([`store`]) →
//! replies. [`uplink`] carries the outbox to the cloud and agent lines back
//! through the same session service; [`models`] swaps in new models.
//! [`run`] wires the parts together explicitly and returns a [`Node`];
//! `main.rs` only calls [`cli::main`].

pub mod branch;
pub mod cli;
pub mod config;
pub mod housekeeping;
pub mod inference;
pub mod metrics;
pub mod models;
pub mod server;
pub mod session;
pub mod store;
pub mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::housekeeping::Keeper;
use crate::inference::Inference;
use crate::metrics::Metrics;
use crate::models::ModelManager;
use crate::server::AppState;
use crate::session::Sessions;
use crate::store::{Store, StoreError};
use edgedesk_dialog::kb::KbError;
use edgedesk_dialog::{self as dialog, Engine, EngineConfig, KnowledgeBase};
use edgedesk_nlu::NluError;

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

/// A running node, with handles on its parts (for operators' tools and tests).
pub struct Node {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    pub store: Store,
    pub models: Arc<ModelManager>,
    pub sessions: Arc<Sessions>,
    pub keeper: Arc<Keeper>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl Node {
    /// Wait until the node has shut down (after the shutdown token fires).
    pub async fn wait(self) -> Result<(), NodeError> {
        let Node {
            task,
            store,
            models,
            sessions,
            keeper,
            ..
        } = self;
        // The store and inference threads stop when their last handle goes.
        drop((store, models, sessions, keeper));
        match task.await {
            Ok(r) => r,
            Err(e) => Err(NodeError::Serve(std::io::Error::other(e.to_string()))),
        }
    }
}

/// Load the model (through the model manager: the active kept version, else
/// the factory bundle) and the knowledge base. Blocking: call it off the
/// async workers.
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
    // Intents the learning loop taught the model may bring their answers.
    let shipped = models::load_answers(&model)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "the model's answers are unusable");
            None
        })
        .unwrap_or_default();
    let mut missing = kb.missing_answers(&model.manifest().labels, &handled);
    missing.retain(|l| !shipped.0.contains_key(*l));
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
            // Checked when the configuration loaded.
            branch: config.branch().unwrap_or_else(|_| config.dialog_week()),
        },
    );
    Ok((manager, engine))
}

/// Start a node: verify and load the model, open the store, bind, serve.
/// Cancelling `shutdown` closes chat sockets (code 1001) and stops the node
/// within `server.shutdown_grace_secs`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Node, NodeError> {
    // A descriptor per kiosk connection, and the store, models and uplink.
    let soft = edgedesk_support::limits::raise_open_files();
    let needed = config.server.max_connections as u64 + 256;
    if let Some(soft) = soft.filter(|s| *s < needed) {
        tracing::warn!(
            soft,
            needed,
            "the open-file limit is below server.max_connections plus the node's own files; raise its hard limit (systemd LimitNOFILE) or lower server.max_connections"
        );
    }
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
    let models = Arc::new(manager);
    let (store, store_thread) = Store::open(&config.store)?;
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: config.server.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(NodeError::Serve)?;
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let metrics = Arc::new(Metrics::new());
    let (inference, inference_threads) = Inference::start(
        config.nlu.sessions,
        config.nlu.queue_capacity,
        config.nlu.batch_max,
        Duration::from_millis(config.nlu.max_wait_ms),
        models.shadow.clone(),
    );
    let outbox = Arc::new(tokio::sync::Notify::new());
    // Visitors typing to an agent, for the uplink (bounded; dropped when
    // full: typing signals are ephemeral).
    let (typing_tx, typing_rx) = tokio::sync::mpsc::channel(64);
    let (link_tx, link_rx) = tokio::sync::watch::channel(false);
    branch::restore(&store, &engine).await;
    let sessions = Arc::new(Sessions::new(session::Deps {
        engine,
        models: models.clone(),
        inference,
        store: store.clone(),
        metrics: metrics.clone(),
        outbox: outbox.clone(),
        typing_up: typing_tx,
        link_up: link_rx,
        history_limit: config.server.history_limit,
        max_turns_in_flight: config.server.max_turns_in_flight,
        idle_reset_secs: config.server.kiosk_idle_reset_secs,
        abandon_grace_ms: i64::from(config.dialog.abandon_grace_secs) * 1000,
        queue_offer_ms: i64::from(config.dialog.queue_offer_secs) * 1000,
        samples: (config.cloud.enabled && config.learning.enabled)
            .then(|| session::samples::Budget::new(config.learning.samples_per_day)),
    }));
    let keeper = Arc::new(Keeper {
        retention: config.retention.clone(),
        cloud: config.cloud.clone(),
        sessions: sessions.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
    });
    let tasks = tokio_util::task::TaskTracker::new();
    let state = Arc::new(AppState {
        server: config.server.clone(),
        idle_conversation: Duration::from_secs(
            u64::from(config.retention.idle_conversation_minutes) * 60,
        ),
        sessions: sessions.clone(),
        metrics: metrics.clone(),
        store: store.clone(),
        models: models.clone(),
        connections: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        hellos: server::ws::HelloLimiter::new(config.server.hellos_per_minute_per_address),
    });
    tracing::info!(%addr, "edge node listening; kiosk page at http://{addr}/");
    let keeper_task = tokio::spawn(keeper.clone().run(shutdown.clone()));
    let uplink = config.cloud.enabled.then(|| {
        let data_dir = config
            .store
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_owned();
        tokio::spawn(uplink::run(
            uplink::Uplink {
                cloud: config.cloud.clone(),
                store: store.clone(),
                sessions: sessions.clone(),
                models: models.clone(),
                metrics: metrics.clone(),
                outbox,
                link_up: link_tx,
                shutdown: shutdown.clone(),
                started: std::time::Instant::now(),
                data_dir,
            },
            typing_rx,
        ))
    });
    let app = server::router(state);
    let limits = server::listen::Limits::new(
        config.server.request_deadline_secs,
        config.server.max_connections_per_address,
        config.server.max_open_connections,
    );
    let listener = server::listen::GuardedListener::new(listener, limits, metrics.clone());
    // Chat frames are small and latency-bound: no Nagle delay. (`tap_io` also
    // gives the connection's peer address to handlers.)
    let listener = axum::serve::ListenerExt::tap_io(listener, |io| {
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let handles = (
        store.clone(),
        models.clone(),
        sessions.clone(),
        keeper.clone(),
    );
    drop((store, models, sessions, keeper));
    let task = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
        // Chat sockets see the same token and close themselves; wait for them.
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("shutdown grace period over; dropping remaining connections");
        }
        let _ = keeper_task.await;
        if let Some(u) = uplink {
            let _ = u.await;
        }
        // The store thread flushes and exits once the last handle is gone;
        // the inference threads once the sessions (the last sender) are.
        let _ = tokio::time::timeout(
            grace,
            tokio::task::spawn_blocking(move || {
                store_thread.join();
                inference_threads.join();
            }),
        )
        .await;
        tracing::info!("edge node stopped");
        served.map_err(NodeError::Serve)
    });
    let (store, models, sessions, keeper) = handles;
    Ok(Node {
        addr,
        store,
        models,
        sessions,
        keeper,
        task,
    })
}
