//! The node's link to the cloud controller: enrolment, then store-and-forward
//! over MQTT with sealed, signed envelopes.
//!
//! - Enrolment (once): a fresh key pair, a one-time token, `POST /api/v1/enroll`;
//!   the controller's keys and the broker credentials are pinned in
//!   `cloud.identity_path`.
//! - Drain: the oldest outbox events go up in batches; they are deleted only
//!   when the controller's `events_ack` names them (it sends that after its
//!   commit). Unacknowledged batches are sent again after `ack_timeout_secs`,
//!   so a lost message, broker restart or controller crash costs a resend,
//!   never an event; the controller stores each event id once.
//! - Commands from the controller are executed once (by id) and acknowledged.
//! - The outbox stays within its disk budget by dropping the oldest routine
//!   summaries only.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use std::time::{Duration, Instant};

use edgedesk_common::chat::Sender;
use edgedesk_common::envelope::{
    CONTROLLER, Envelope, Header, Identity, Peer, PublicKeys, ReplayWindow, SeqCounter, topic,
};
use edgedesk_common::event::{Event, EventBody};
use edgedesk_common::sync::{
    Command, Down, EnrollRequest, EnrollResponse, Heartbeat, ModelEndpoint, MqttEndpoint, Up,
    enroll_proof_message,
};
use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::config::CloudConfig;
use edgedesk_nlu::entities::mask_personal;
use crate::server::ws::now_ms;
use crate::server::{AgentAction, AppState};
use crate::store::{CommandIn, KV_COMPACTED};

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("node identity {path}: {message}")]
    Identity { path: String, message: String },
    #[error("enrolment refused by the controller ({status}): {message}")]
    EnrollRefused { status: u16, message: String },
    #[error(
        "not enrolled and cloud.enroll_token is empty: issue one with `cloud-controller token create --node <id>`"
    )]
    NoToken,
}

/// What the node keeps about itself and the controller it pinned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityFile {
    pub node_id: String,
    /// 64 secret bytes, hex.
    pub secret: String,
    #[serde(default)]
    pub controller: Option<PublicKeys>,
    #[serde(default)]
    pub mqtt: Option<MqttEndpoint>,
    /// Model-signing key and QUIC endpoint, pinned at enrolment.
    #[serde(default)]
    pub models: Option<ModelEndpoint>,
}

impl IdentityFile {
    /// Load the identity, or create a fresh key pair for `node_id`.
    pub fn load_or_create(path: &Path, node_id: &str) -> Result<IdentityFile, UplinkError> {
        let err = |message: String| UplinkError::Identity {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let f: IdentityFile =
                    serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
                if f.node_id != node_id {
                    return Err(err(format!(
                        "belongs to node {:?}, but cloud.node_id is {node_id:?}; use another identity_path",
                        f.node_id
                    )));
                }
                Ok(f)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 64];
                getrandom::fill(&mut secret).map_err(|e| err(e.to_string()))?;
                let f = IdentityFile {
                    node_id: node_id.into(),
                    secret: hex::encode(secret),
                    controller: None,
                    mqtt: None,
                    models: None,
                };
                f.save(path)?;
                Ok(f)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), UplinkError> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        edgedesk_support::secret::write_private(path, text.as_bytes()).map_err(|e| UplinkError::Identity {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn identity(&self) -> Result<Identity, UplinkError> {
        let bytes = hex::decode(&self.secret)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok());
        bytes
            .map(|b| Identity::from_secret(&b))
            .ok_or_else(|| UplinkError::Identity {
                path: self.node_id.clone(),
                message: "secret is not 64 hex bytes".into(),
            })
    }
}

/// Enrol with the controller (once); returns the pinned controller keys and broker endpoint.
pub async fn enroll(cfg: &CloudConfig, file: &mut IdentityFile) -> Result<(), UplinkError> {
    if file.controller.is_some() && file.mqtt.is_some() {
        return Ok(());
    }
    if cfg.enroll_token.is_empty() {
        return Err(UplinkError::NoToken);
    }
    let identity = file.identity()?;
    let req = EnrollRequest {
        token: cfg.enroll_token.clone(),
        node_id: cfg.node_id.clone(),
        keys: identity.public(),
        proof: identity.sign(&enroll_proof_message(&cfg.node_id, &cfg.enroll_token)),
        sw_version: env!("CARGO_PKG_VERSION").into(),
    };
    let url = format!("{}/api/v1/enroll", cfg.controller_url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| UplinkError::EnrollRefused {
            status: 0,
            message: e.to_string(),
        })?;
    let mut delay = Duration::from_millis(250);
    let resp = loop {
        match client.post(&url).json(&req).send().await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, %url, "controller unreachable for enrolment; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let message = resp.text().await.unwrap_or_default();
        return Err(UplinkError::EnrollRefused { status, message });
    }
    let body: EnrollResponse = resp.json().await.map_err(|e| UplinkError::EnrollRefused {
        status,
        message: e.to_string(),
    })?;
    file.controller = Some(body.controller);
    file.mqtt = Some(body.mqtt);
    file.models = body.models;
    tracing::info!(node = %cfg.node_id, "enrolled with the controller");
    Ok(())
}

/// Sends sealed envelopes to the controller.
struct Sealer {
    node: String,
    identity: Identity,
    controller: Peer,
    seq: SeqCounter,
}

impl Sealer {
    fn next_seq(&self) -> u64 {
        self.seq
            .next(chrono::Utc::now().timestamp_micros().max(1) as u64)
    }

    fn seal(&self, body: &Up) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("OS random source");
        let id = uuid::Uuid::new_v4().to_string();
        let plain = serde_json::to_vec(body).unwrap_or_default();
        Envelope::seal(
            &self.identity,
            &self.controller,
            Header {
                id: &id,
                from: &self.node,
                to: CONTROLLER,
                seq: self.next_seq(),
                ts: now_ms(),
            },
            nonce,
            &plain,
        )
        .to_json()
    }
}

/// Mask personal data in what leaves the branch (contact details for a call-back stay).
pub fn outgoing(mut e: Event, mask: bool) -> Event {
    if mask {
        match &mut e.body {
            EventBody::Escalation(x) => x.last_text = mask_personal(&x.last_text),
            EventBody::OfflineMessage(x) => x.message = mask_personal(&x.message),
            // History keeps what the visitor said without their numbers.
            EventBody::ConversationSummary(x) => {
                for l in x
                    .transcript
                    .iter_mut()
                    .filter(|l| l.from == Sender::Visitor)
                {
                    l.text = mask_personal(&l.text);
                }
            }
            // Live chat lines go to a person who must read them as written.
            EventBody::FlowCompleted(_) | EventBody::ChatLine(_) | EventBody::Rating(_) => {}
        }
    }
    e
}

const KV_DOWN_SEQ: &str = "controller_seq_high";

/// Design: envelopes are published at QoS 0. Delivery is guaranteed end to
/// end by the controller's `events_ack` and our resends, not by the broker
/// (which keeps nothing); QoS 1 added PUBACKs that, with a broker that does
/// not set TCP_NODELAY, stalled each acknowledgement ~40 ms (Nagle + delayed ACK).
const ENVELOPE_QOS: QoS = QoS::AtMostOnce;

/// Run the uplink until shutdown. Errors here are logged; the node keeps serving.
pub async fn run(app: Arc<AppState>) {
    let cfg = app.config.cloud.clone();
    if let Err(e) = run_inner(app, &cfg).await {
        tracing::error!(error = %e, "cloud link stopped; the node keeps serving and events wait in the outbox");
    }
}

async fn run_inner(app: Arc<AppState>, cfg: &CloudConfig) -> Result<(), UplinkError> {
    let mut file = IdentityFile::load_or_create(&cfg.identity_path, &cfg.node_id)?;
    tokio::select! {
        _ = app.shutdown.cancelled() => return Ok(()),
        r = enroll(cfg, &mut file) => r?,
    }
    file.save(&cfg.identity_path)?;
    let identity = file.identity()?;
    let controller = file
        .controller
        .clone()
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| UplinkError::Identity {
            path: cfg.identity_path.display().to_string(),
            message: "bad controller keys".into(),
        })?;
    let mqtt = file.mqtt.clone().expect("enrolled");
    let sealer = Arc::new(Sealer {
        node: cfg.node_id.clone(),
        identity: identity.clone(),
        controller: controller.clone(),
        seq: SeqCounter::default(),
    });
    let connect_id = uuid::Uuid::new_v4().to_string();

    let mut opts = MqttOptions::new(cfg.node_id.clone(), mqtt.host.clone(), mqtt.port);
    opts.set_credentials(mqtt.username.clone(), mqtt.password.clone());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_clean_session(true);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_last_will(LastWill::new(
        topic::up(&cfg.node_id),
        sealer.seal(&Up::Will {
            connect_id: connect_id.clone(),
        }),
        QoS::AtLeastOnce,
        false,
    ));
    if mqtt.tls {
        let ca = mqtt.ca_pem.as_deref().unwrap_or_default();
        let tls = edgedesk_support::tls::pinned_client(ca).map_err(|e| UplinkError::Identity {
            path: cfg.identity_path.display().to_string(),
            message: e.to_string(),
        })?;
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let (connected_tx, connected_rx) = watch::channel(false);
    let (ack_tx, ack_rx) = mpsc::channel::<Vec<String>>(256);
    let high = app
        .store
        .kv_get(KV_DOWN_SEQ)
        .await
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let receiver = Receiver {
        window: ReplayWindow::starting_at(high),
        ack_tx,
        connect_id: connect_id.clone(),
        exec: Exec {
            app: app.clone(),
            client: client.clone(),
            sealer: sealer.clone(),
            models: file.models.clone(),
        },
        inflight: Default::default(),
    };
    let poll = tokio::spawn(receiver.poll(eventloop, connected_tx));
    let (typing_tx, mut typing_rx) = mpsc::channel::<String>(64);
    let _ = app.typing_tx.set(typing_tx);
    let typing = {
        let (client, sealer) = (client.clone(), sealer.clone());
        tokio::spawn(async move {
            while let Some(conversation) = typing_rx.recv().await {
                let up = Up::Typing { conversation };
                let _ = client.try_publish(
                    topic::up(&sealer.node),
                    ENVELOPE_QOS,
                    false,
                    sealer.seal(&up),
                );
            }
        })
    };
    let beat = tokio::spawn(heartbeats(
        app.clone(),
        client.clone(),
        sealer.clone(),
        connected_rx.clone(),
        connect_id,
    ));
    drain(app.clone(), client.clone(), sealer, connected_rx, ack_rx).await;
    let _ = client.disconnect().await;
    let _ = beat.await;
    typing.abort();
    let _ = poll.await;
    Ok(())
}

struct Receiver {
    window: ReplayWindow,
    ack_tx: mpsc::Sender<Vec<String>>,
    connect_id: String,
    exec: Exec,
    /// Long-running commands in progress (by id).
    inflight: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl Receiver {
    async fn poll(mut self, mut eventloop: EventLoop, connected: watch::Sender<bool>) {
        let node = self.exec.sealer.node.clone();
        let mut backoff = Duration::from_millis(200);
        loop {
            let ev = tokio::select! {
                _ = self.exec.app.shutdown.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(200);
                    tracing::info!(%node, "connected to the broker");
                    self.exec.app.metrics.uplink_connected.set(1);
                    self.exec.app.broadcast_link(true);
                    let _ = self
                        .exec
                        .client
                        .subscribe(topic::down(&node), QoS::AtLeastOnce)
                        .await;
                    let hello = Up::Hello {
                        connect_id: self.connect_id.clone(),
                        sw_version: env!("CARGO_PKG_VERSION").into(),
                    };
                    let _ = self.exec.send_up(&hello).await;
                    let _ = connected.send(true);
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => self.on_down(&p.payload).await,
                Ok(_) => {}
                Err(e) => {
                    if *connected.borrow() {
                        tracing::warn!(%node, error = %e, "broker connection lost; retrying");
                    }
                    if *connected.borrow() {
                        self.exec.app.broadcast_link(false);
                    }
                    self.exec.app.metrics.uplink_connected.set(0);
                    let _ = connected.send(false);
                    tokio::select! {
                        _ = self.exec.app.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        let _ = connected.send(false);
    }

    async fn on_down(&mut self, payload: &[u8]) {
        let opened = Envelope::from_json(payload).and_then(|env| {
            if env.from != CONTROLLER || env.to != self.exec.sealer.node {
                return Err(edgedesk_common::envelope::EnvelopeError::Malformed(
                    "wrong sender or recipient".into(),
                ));
            }
            let plain = env.open(&self.exec.sealer.controller, &self.exec.sealer.identity)?;
            self.window.accept(env.seq)?;
            Ok(plain)
        });
        let plain = match opened {
            Ok(p) => p,
            Err(e) => {
                self.exec
                    .app
                    .metrics
                    .uplink_refused
                    .get_or_create(&vec![("reason".into(), e.reason().into())])
                    .inc();
                tracing::warn!(error = %e, "message from the broker refused");
                return;
            }
        };
        let _ = self
            .exec
            .app
            .store
            .kv_set(KV_DOWN_SEQ, &self.window.highest().to_string())
            .await;
        match serde_json::from_slice::<Down>(&plain) {
            Ok(Down::EventsAck { ids }) => {
                let _ = self.ack_tx.try_send(ids);
            }
            Ok(Down::Command(cmd)) => self.on_command(cmd).await,
            Ok(Down::Typing { conversation }) => {
                let app = self.exec.app.clone();
                tokio::spawn(async move {
                    let _ = crate::server::ws::deliver_agent_action(
                        &app,
                        &conversation,
                        AgentAction::Typing,
                    )
                    .await;
                });
            }
            Err(e) => tracing::warn!(error = %e, "unreadable message from the controller"),
        }
    }

    async fn on_command(&self, cmd: Command) {
        use edgedesk_common::sync::command as k;
        if cmd.kind == k::MODEL_UPDATE || cmd.kind == k::MODEL_ROLLBACK {
            // Long-running: off the receive loop. A resend while it runs is
            // ignored; the acknowledgement follows when it ends.
            if !self
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(cmd.id.clone())
            {
                return;
            }
            let (exec, inflight) = (self.exec.clone(), self.inflight.clone());
            tokio::spawn(async move {
                let id = cmd.id.clone();
                exec.on_command(cmd).await;
                inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            });
            return;
        }
        self.exec.on_command(cmd).await;
    }
}

/// What running a command needs (cloneable, for commands run off the loop).
#[derive(Clone)]
struct Exec {
    app: Arc<AppState>,
    client: AsyncClient,
    sealer: Arc<Sealer>,
    /// The model service pinned at enrolment (absent: no rollouts).
    models: Option<ModelEndpoint>,
}

impl Exec {
    /// Run a command; (ok, detail) for the acknowledgement.
    async fn execute(&self, cmd: &Command) -> (bool, String) {
        use edgedesk_common::sync::command as k;
        fn args<T: serde::de::DeserializeOwned>(cmd: &Command) -> Result<T, String> {
            serde_json::from_value(cmd.args.clone()).map_err(|e| format!("bad arguments: {e}"))
        }
        let delivered = match cmd.kind.as_str() {
            "ping" => return (true, "pong".into()),
            k::AGENT_JOINED => args::<k::AgentJoined>(cmd).map(|a| {
                (
                    a.conversation,
                    AgentAction::Joined {
                        agent: a.agent_name,
                    },
                )
            }),
            k::AGENT_MESSAGE => args::<k::AgentMessage>(cmd).map(|a| {
                (
                    a.conversation,
                    AgentAction::Message {
                        agent: a.agent_name,
                        text: a.text,
                    },
                )
            }),
            k::AGENT_LEFT => args::<k::AgentLeft>(cmd).map(|a| (a.conversation, AgentAction::Left)),
            k::AGENT_CLOSED => {
                args::<k::AgentClosed>(cmd).map(|a| (a.conversation, AgentAction::Closed))
            }
            k::MODEL_UPDATE => {
                let a = match args::<k::ModelUpdate>(cmd) {
                    Ok(a) => a,
                    Err(e) => return (false, e),
                };
                let Some(ep) = self.models.clone() else {
                    return (
                        false,
                        "refused: no model-signing key was pinned at enrolment".into(),
                    );
                };
                let ctx = crate::models::FetchContext {
                    node: self.sealer.node.clone(),
                    identity: self.sealer.identity.clone(),
                    endpoint: ep.clone(),
                };
                tracing::info!(rollout = %a.rollout, "model update requested");
                return match self
                    .app
                    .models
                    .update(&a.release, &ep.signing_key, ctx)
                    .await
                {
                    Ok(report) => {
                        self.app.metrics.model_change("updated");
                        (true, report)
                    }
                    Err(e) => {
                        tracing::warn!(rollout = %a.rollout, error = %e, "model update failed");
                        self.app.metrics.model_change(e.reason());
                        (false, format!("{}: {e}", e.reason()))
                    }
                };
            }
            k::MODEL_ROLLBACK => {
                let a = match args::<k::ModelRollback>(cmd) {
                    Ok(a) => a,
                    Err(e) => return (false, e),
                };
                return match self.app.models.rollback(&a.to_version).await {
                    Ok(report) => {
                        self.app.metrics.model_change("rolled_back");
                        (true, report)
                    }
                    Err(e) => {
                        self.app.metrics.model_change(e.reason());
                        (false, format!("{}: {e}", e.reason()))
                    }
                };
            }
            other => return (false, format!("unknown command kind {other:?}")),
        };
        let result = match delivered {
            Ok((conversation, action)) => {
                crate::server::ws::deliver_agent_action(&self.app, &conversation, action).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => (true, "delivered".into()),
            Err(e) => (false, e),
        }
    }

    async fn on_command(&self, cmd: Command) {
        // Exactly once: a command seen before is acknowledged with its first result.
        let (ok, detail) = match self.app.store.command_result(&cmd.id).await {
            Ok(Some(earlier)) => earlier,
            Ok(None) => {
                // In order within a stream: after a gap (an earlier command
                // lost in flight), hold this one back, unacknowledged, and ask
                // for the pending commands again; they come in queue order.
                if let Some(s) = &cmd.stream {
                    match self.app.store.stream_seq(&s.key).await {
                        Ok(last) if s.seq > last + 1 => {
                            tracing::info!(stream = %s.key, seq = s.seq, last, "command stream gap; asking for a resend");
                            self.app.metrics.command_gaps.inc();
                            let _ = self.send_up(&Up::ResendCommands).await;
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "reading a command stream failed; it will be resent");
                            return;
                        }
                    }
                }
                let (ok, detail) = self.execute(&cmd).await;
                let record = CommandIn {
                    id: cmd.id.clone(),
                    kind: cmd.kind.clone(),
                    args: cmd.args.to_string(),
                    received_at: now_ms(),
                    ok,
                    detail: detail.clone(),
                    stream: cmd.stream.as_ref().map(|s| (s.key.clone(), s.seq)),
                };
                if let Err(e) = self.app.store.command_in(record).await {
                    tracing::error!(error = %e, "recording a command failed; it will be resent");
                    return;
                }
                (ok, detail)
            }
            Err(e) => {
                tracing::error!(error = %e, "reading command results failed; it will be resent");
                return;
            }
        };
        tracing::info!(id = %cmd.id, kind = %cmd.kind, ok, "command executed");
        let ack = Up::CommandAck {
            id: cmd.id,
            ok,
            detail,
        };
        let _ = self.send_up(&ack).await;
    }

    /// Seal and publish one message on our up topic.
    async fn send_up(&self, body: &Up) -> Result<(), rumqttc::ClientError> {
        self.client
            .publish(
                topic::up(&self.sealer.node),
                ENVELOPE_QOS,
                false,
                self.sealer.seal(body),
            )
            .await
    }
}

async fn heartbeats(
    app: Arc<AppState>,
    client: AsyncClient,
    sealer: Arc<Sealer>,
    mut connected: watch::Receiver<bool>,
    connect_id: String,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(app.config.cloud.heartbeat_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = connected.changed() => {
                if !*connected.borrow() { continue; }
            }
        }
        if !*connected.borrow() {
            continue;
        }
        let hb = heartbeat(&app, &connect_id).await;
        let _ = client
            .publish(
                topic::up(&sealer.node),
                ENVELOPE_QOS,
                false,
                sealer.seal(&Up::Heartbeat(Box::new(hb))),
            )
            .await;
    }
}

/// The node's current state, as reported upstream.
pub async fn heartbeat(app: &AppState, connect_id: &str) -> Heartbeat {
    let model = app.model.get();
    let open_sessions = app.live.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    let dir = app
        .config
        .store
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Heartbeat {
        connect_id: connect_id.to_owned(),
        sw_version: env!("CARGO_PKG_VERSION").into(),
        model_name: model.manifest().name.clone(),
        model_version: model.manifest().version.to_string(),
        uptime_s: app.started.elapsed().as_secs(),
        open_sessions,
        outbox_depth: app.store.outbox_depth().await.unwrap_or(0),
        outbox_compacted: app
            .store
            .kv_get(KV_COMPACTED)
            .await
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        free_disk_bytes: fs4::available_space(dir).unwrap_or(0),
        model_health: Some(app.models.health()),
    }
}

async fn drain(
    app: Arc<AppState>,
    client: AsyncClient,
    sealer: Arc<Sealer>,
    mut connected: watch::Receiver<bool>,
    mut acks: mpsc::Receiver<Vec<String>>,
) {
    let cfg = &app.config.cloud;
    let timeout = Duration::from_secs(cfg.ack_timeout_secs);
    let mut last_compact = Instant::now() - Duration::from_secs(3600);
    loop {
        if app.shutdown.is_cancelled() {
            break;
        }
        if last_compact.elapsed() >= Duration::from_secs(5) {
            last_compact = Instant::now();
            compact(&app).await;
        }
        if !*connected.borrow() {
            tokio::select! {
                _ = app.shutdown.cancelled() => break,
                _ = connected.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        let batch = match app.store.outbox_peek(cfg.batch_max).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = app.shutdown.cancelled() => break,
                _ = app.outbox_notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let mut waiting: HashSet<String> = batch.iter().map(|e| e.event.id.clone()).collect();
        let events: Vec<Event> = batch
            .into_iter()
            .map(|e| outgoing(e.event, cfg.mask_personal_data))
            .collect();
        let n = events.len() as u64;
        let payload = sealer.seal(&Up::Events { events });
        if client
            .publish(topic::up(&sealer.node), ENVELOPE_QOS, false, payload)
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        app.metrics.uplink_sent.inc_by(n);
        let deadline = tokio::time::Instant::now() + timeout;
        while !waiting.is_empty() {
            tokio::select! {
                _ = app.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(pending = waiting.len(), "no acknowledgement in time; sending again");
                    break;
                }
                ids = acks.recv() => {
                    let Some(ids) = ids else { return };
                    for id in &ids {
                        waiting.remove(id);
                    }
                    // Late acks of earlier sends are as good: delete whatever is acknowledged.
                    match app.store.outbox_delete(ids).await {
                        Ok(deleted) => {
                            app.metrics.uplink_acked.inc_by(deleted as u64);
                        }
                        Err(e) => tracing::error!(error = %e, "deleting acknowledged events failed"),
                    }
                }
            }
        }
    }
}

async fn compact(app: &AppState) {
    match app
        .store
        .outbox_compact(app.config.cloud.outbox_budget_bytes)
        .await
    {
        Ok(c) => {
            app.metrics.outbox_compacted.set(c.dropped_total as i64);
            if c.dropped > 0 {
                tracing::warn!(
                    dropped = c.dropped,
                    total = c.dropped_total,
                    "outbox over budget: oldest routine summaries dropped"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "outbox compaction failed"),
    }
}
