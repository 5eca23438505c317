//! The controller's side of edge sync: one MQTT client subscribed to every
//! node's `up` topic, and the processing of what arrives.
//!
//! The rumqttc event loop only parses and hands messages to a bounded queue
//! (policy: when full, drop the newest and count it — nodes resend anything
//! not acknowledged, so nothing is lost). One processing task verifies, opens
//! and applies each envelope in arrival order, and answers with sealed
//! acknowledgements.

use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgedesk_common::envelope::{
    CONTROLLER, Envelope, EnvelopeError, Header, Identity, Peer, ReplayWindow, SeqCounter, topic,
};
use edgedesk_common::sync::{Command, Down, Up};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::broker::Credentials;
use crate::config::Config;
use crate::fleet::{Fleet, Transition};
use crate::metrics::Metrics;
use crate::store::{self, Db, StoreError};

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What the controller knows about a node's keys and replay state.
struct NodeSec {
    peer: Peer,
    window: ReplayWindow,
}

/// State shared by the link, the API and the background tasks.
pub struct Hub {
    pub config: Config,
    pub db: Db,
    pub identity: Identity,
    pub metrics: Metrics,
    pub creds: Credentials,
    pub fleet: Mutex<Fleet>,
    pub client: AsyncClient,
    /// Human agents' live chats.
    pub handoff: crate::handoff::Handoff,
    /// False while another replica holds the leader Lease (Kubernetes mode);
    /// the rollout driver and the operator act only while true.
    pub leader: std::sync::Arc<std::sync::atomic::AtomicBool>,
    nodes: Mutex<HashMap<String, NodeSec>>,
    seq: SeqCounter,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("MQTT: {0}")]
    Mqtt(#[from] rumqttc::ClientError),
}

impl Hub {
    pub fn new(
        config: Config,
        db: Db,
        identity: Identity,
        creds: Credentials,
        client: AsyncClient,
    ) -> Hub {
        let timeout = config.fleet.heartbeat_timeout_secs as i64 * 1000;
        let config_kubernetes_enabled = config.kubernetes.enabled;
        Hub {
            config,
            db,
            identity,
            metrics: Metrics::new(),
            creds,
            fleet: Mutex::new(Fleet::new(timeout)),
            client,
            handoff: crate::handoff::Handoff::default(),
            leader: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
                !config_kubernetes_enabled,
            )),
            nodes: Mutex::new(HashMap::new()),
            seq: SeqCounter::default(),
        }
    }

    /// Strictly increasing sequence: max(previous + 1, now in µs), so it also
    /// increases across restarts without being stored.
    fn next_seq(&self) -> u64 {
        self.seq
            .next(chrono::Utc::now().timestamp_micros().max(1) as u64)
    }

    /// Whether `node` is online now (fleet state machine).
    pub fn is_online(&self, node: &str) -> bool {
        self.fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_online(node)
    }

    /// Forget cached keys of `node` (after revocation).
    pub fn forget(&self, node: &str) {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
        self.creds.remove(node);
        if let Some(t) = self
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node)
        {
            self.record_transitions(vec![t]);
        }
    }

    /// A node's public keys: cached since the node (or a send to it) last
    /// needed them, from the store otherwise (every message would else cost
    /// a database read). `None` for an unknown or revoked node, or one whose
    /// stored keys do not parse (they were checked at enrolment).
    async fn peer(&self, node: &str) -> Result<Option<Peer>, LinkError> {
        if let Some(sec) = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
        {
            return Ok(Some(sec.peer.clone()));
        }
        let row = self
            .db
            .call({
                let node = node.to_owned();
                move |c| store::node(c, &node)
            })
            .await?;
        let Some((row, peer)) = row
            .filter(|r| r.revoked_at.is_none())
            .and_then(|r| r.keys.parse().ok().map(|p| (r, p)))
        else {
            return Ok(None);
        };
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node.to_owned())
            .or_insert_with(|| NodeSec {
                peer: peer.clone(),
                window: ReplayWindow::starting_at(row.seq_high),
            });
        Ok(Some(peer))
    }

    /// Seal `body` for `node` and publish it on the node's `down` topic.
    pub async fn send(&self, node: &str, body: &Down) -> Result<(), LinkError> {
        // Unknown, revoked or unreadable keys: nothing to seal for.
        let Some(peer) = self.peer(node).await? else {
            return Ok(());
        };
        let plaintext = serde_json::to_vec(body).unwrap_or_default();
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("OS random source");
        let id = uuid::Uuid::new_v4().to_string();
        let env = Envelope::seal(
            &self.identity,
            &peer,
            Header {
                id: &id,
                from: CONTROLLER,
                to: node,
                seq: self.next_seq(),
                ts: now_ms(),
            },
            nonce,
            &plaintext,
        );
        self.client
            // QoS 0: delivery is end to end (acks and resends); see the
            // uplink's ENVELOPE_QOS for why not QoS 1.
            .publish(topic::down(node), QoS::AtMostOnce, false, env.to_json())
            .await?;
        Ok(())
    }

    /// Send every unacknowledged command of `node`.
    pub async fn send_pending(&self, node: &str) -> Result<(), LinkError> {
        let pending = self
            .db
            .call({
                let node = node.to_owned();
                move |c| store::pending_commands(c, &node)
            })
            .await?;
        for cmd in pending {
            self.send_command(node, cmd).await?;
        }
        Ok(())
    }

    /// Queue a command for `node` (kept until acknowledged) and send it now
    /// if the node is online.
    /// Commands with the same `stream` key are executed by the node in the
    /// order they were queued.
    pub async fn queue_command(
        &self,
        node: &str,
        kind: &str,
        args: serde_json::Value,
        stream: Option<&str>,
    ) -> Result<Command, LinkError> {
        let cmd = Command {
            id: uuid::Uuid::new_v4().to_string(),
            kind: kind.to_owned(),
            args,
            issued_at: now_ms(),
            stream: stream.map(|key| edgedesk_common::sync::Stream {
                key: key.to_owned(),
                seq: 0,
            }),
        };
        let online = self
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_online(node);
        let (n, c2) = (node.to_owned(), cmd.clone());
        let sent_at = online.then(now_ms);
        let cmd = self
            .db
            .call(move |c| store::enqueue_command(c, &n, &c2, sent_at))
            .await?;
        if online {
            // Recorded as sent in the same write as the enqueue.
            match self.send(node, &Down::Command(cmd.clone())).await {
                Ok(()) => self.metrics.commands_sent.inc(),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "sending a command failed; it stays queued");
                    0
                }
            };
        }
        Ok(cmd)
    }

    pub async fn send_command(&self, node: &str, cmd: Command) -> Result<(), LinkError> {
        let id = cmd.id.clone();
        self.send(node, &Down::Command(cmd)).await?;
        self.metrics.commands_sent.inc();
        let now = now_ms();
        self.db.call(move |c| store::mark_sent(c, &id, now)).await?;
        Ok(())
    }

    fn record_transitions(&self, ts: Vec<Transition>) {
        if ts.is_empty() {
            return;
        }
        let db = self.db.clone();
        let limit = self.config.fleet.history_limit;
        let now = now_ms();
        for t in &ts {
            match t {
                Transition::Online { node, reason } => {
                    tracing::info!(%node, reason, "node online");
                    self.metrics.nodes_online.inc();
                    self.handoff.node_status(node, true);
                }
                Transition::Offline { node, reason } => {
                    tracing::info!(%node, reason, "node offline");
                    self.metrics.nodes_online.dec();
                    self.handoff.node_status(node, false);
                }
            }
        }
        tokio::spawn(async move {
            let res = db
                .call(move |c| {
                    for t in &ts {
                        let (node, online, reason) = match t {
                            Transition::Online { node, reason } => (node, true, *reason),
                            Transition::Offline { node, reason } => (node, false, *reason),
                        };
                        store::set_online(c, node, online, now, reason)?;
                        store::trim_history(c, node, limit)?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "recording fleet transitions failed");
            }
        });
    }

    /// Verify, open and check one envelope from `node`'s up topic.
    async fn open(&self, node: &str, payload: &[u8]) -> Result<(Up, u64), EnvelopeError> {
        let env = Envelope::from_json(payload)?;
        if env.from != node {
            return Err(EnvelopeError::Malformed(format!(
                "sender {} on {node}'s topic",
                env.from
            )));
        }
        if env.to != CONTROLLER {
            return Err(EnvelopeError::Malformed(format!("addressed to {}", env.to)));
        }
        let skew = self.config.sync.max_clock_skew_secs as i64 * 1000;
        if (env.ts - now_ms()).abs() > skew {
            return Err(EnvelopeError::Replay(env.seq));
        }
        let peer = self
            .peer(node)
            .await
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?
            .ok_or(EnvelopeError::BadKey)?;
        let plain = env.open(&peer, &self.identity)?;
        let up: Up =
            serde_json::from_slice(&plain).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        // A will was sealed at connect time; it is checked against the current
        // connection instead of the sequence window.
        if !matches!(up, Up::Will { .. }) {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let sec = nodes.get_mut(node).ok_or(EnvelopeError::BadKey)?;
            sec.window.accept(env.seq)?;
        }
        Ok((up, env.seq))
    }

    /// Apply a batch of opened messages: every database change of the batch
    /// in one transaction (one fsync: group commit), then, only after the
    /// commit, acknowledgements and live-chat pushes in arrival order.
    async fn apply_batch(&self, batch: Vec<(String, Up, u64)>) -> Result<(), LinkError> {
        let now = now_ms();
        let mut transitions = Vec::new();
        {
            let mut fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
            for (node, up, _) in &batch {
                transitions.extend(match up {
                    Up::Hello { connect_id, .. } => fleet.heard(node, now, Some(connect_id)),
                    Up::Will { connect_id } => fleet.will(node, connect_id),
                    Up::Heartbeat(hb) => fleet.heard(node, now, Some(&hb.connect_id)),
                    _ => fleet.heard(node, now, None),
                });
            }
        }
        self.record_transitions(transitions);
        // Typing signals and resend requests need no store.
        let mut resend: Vec<String> = Vec::new();
        let batch: Vec<(String, Up, u64)> = batch
            .into_iter()
            .filter(|(node, up, _)| match up {
                Up::Typing { conversation } => {
                    self.handoff.visitor_typing(conversation);
                    false
                }
                Up::Will { .. } => false,
                Up::ResendCommands => {
                    resend.push(node.clone());
                    false
                }
                _ => true,
            })
            .collect();
        for node in resend {
            self.send_pending(&node).await?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        let (batch, outcomes) = self
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                let mut outcomes = Vec::with_capacity(batch.len());
                for (node, up, seq) in &batch {
                    store::touch(&tx, node, *seq, now)?;
                    outcomes.push(match up {
                        Up::Heartbeat(hb) => {
                            let value = serde_json::to_value(hb).unwrap_or_default();
                            store::record_heartbeat(&tx, node, &value, now)?;
                            Outcome::None
                        }
                        Up::Events { events } => {
                            let new = store::ingest(&tx, node, events, now)?;
                            let fresh: Vec<edgedesk_common::event::Event> =
                                new.iter().map(|&i| events[i].clone()).collect();
                            crate::handoff::project(&tx, node, &fresh)?;
                            Outcome::Events {
                                total: events.len(),
                                fresh,
                            }
                        }
                        Up::CommandAck { id, ok, detail } => Outcome::CommandAcked(
                            store::ack_command(&tx, node, id, *ok, detail, now)?,
                        ),
                        _ => Outcome::None,
                    });
                }
                tx.commit()?;
                Ok((batch, outcomes))
            })
            .await?;
        for ((node, up, _), outcome) in batch.into_iter().zip(outcomes) {
            match (up, outcome) {
                (Up::Hello { .. }, _) => self.send_pending(&node).await?,
                (Up::Events { events }, Outcome::Events { total, fresh }) => {
                    self.metrics.events_new.inc_by(fresh.len() as u64);
                    self.metrics
                        .events_duplicate
                        .inc_by((total - fresh.len()) as u64);
                    // Acknowledge only after the commit above.
                    let ids = events.into_iter().map(|e| e.id).collect();
                    self.send(&node, &Down::EventsAck { ids }).await?;
                    if !fresh.is_empty() {
                        self.handoff.on_events(self, &node, &fresh).await;
                    }
                }
                (_, Outcome::CommandAcked(true)) => {
                    self.metrics.commands_acked.inc();
                }
                (Up::Heartbeat(_), _) => {
                    self.metrics.heartbeats.inc();
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What the store made of one message of a batch.
enum Outcome {
    None,
    Events {
        total: usize,
        fresh: Vec<edgedesk_common::event::Event>,
    },
    CommandAcked(bool),
}

/// One inbound message, parsed just enough to route it.
struct Inbound {
    node: String,
    payload: Vec<u8>,
}

/// Small messages, latency-bound: no Nagle delay (for every MQTT client of ours).
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n.set_connection_timeout(10);
    n
}

/// MQTT options for the controller's own client.
pub fn mqtt_options(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    max_payload: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> MqttOptions {
    let mut o = MqttOptions::new("edgedesk-controller", host, port);
    if let Some(t) = tls {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(t),
        ));
    }
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(false);
    o.set_max_packet_size(max_payload, max_payload);
    o.set_inflight(200);
    o
}

/// Most inbound messages applied in one transaction.
const INBOUND_BATCH: usize = 256;

/// Poll the MQTT event loop and process messages until `shutdown`.
pub async fn run(hub: Arc<Hub>, mut eventloop: EventLoop, shutdown: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Inbound>(8192);
    let processor = {
        let hub = hub.clone();
        tokio::spawn(async move {
            // Group commit: whatever arrived while the previous batch was
            // being written goes into the next one (up to INBOUND_BATCH).
            let mut msgs = Vec::with_capacity(INBOUND_BATCH);
            while rx.recv_many(&mut msgs, INBOUND_BATCH).await > 0 {
                let mut batch = Vec::with_capacity(msgs.len());
                for msg in msgs.drain(..) {
                    match hub.open(&msg.node, &msg.payload).await {
                        Ok((up, seq)) => batch.push((msg.node, up, seq)),
                        Err(e) => {
                            hub.metrics.refuse(e.reason());
                            tracing::warn!(node = %msg.node, error = %e, "envelope refused");
                        }
                    }
                }
                if let Err(e) = hub.apply_batch(batch).await {
                    tracing::error!(error = %e, "applying a batch of messages failed; nodes will resend");
                }
            }
        })
    };
    let ticker = {
        let hub = hub.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let retry = Duration::from_secs(hub.config.sync.command_retry_secs.max(1));
            let mut last_retry = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let ts = hub.fleet.lock().unwrap_or_else(|p| p.into_inner()).tick(now_ms());
                        hub.record_transitions(ts);
                        hub.handoff.tick(&hub).await;
                        if last_retry.elapsed() >= retry {
                            last_retry = tokio::time::Instant::now();
                            let online: Vec<String> = hub.db
                                .call(|c| Ok(store::nodes(c)?.into_iter().filter(|n| n.online).map(|n| n.id).collect()))
                                .await
                                .unwrap_or_default();
                            for node in online {
                                if let Err(e) = hub.send_pending(&node).await {
                                    tracing::warn!(%node, error = %e, "resending commands failed");
                                }
                            }
                        }
                    }
                }
            }
        })
    };
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("controller connected to the broker");
                if let Err(e) = hub.client.subscribe(topic::ALL_UP, QoS::AtLeastOnce).await {
                    tracing::error!(error = %e, "subscribe failed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(node) = topic::node_of_up(&p.topic) else {
                    hub.metrics.refuse("topic");
                    continue;
                };
                let msg = Inbound {
                    node: node.to_owned(),
                    payload: p.payload.to_vec(),
                };
                if tx.try_send(msg).is_err() {
                    hub.metrics.inbound_dropped.inc();
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "broker connection lost; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    drop(tx);
    let _ = processor.await;
    let _ = ticker.await;
    let _ = hub.client.disconnect().await;
}
