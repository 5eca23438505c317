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
        Hub {
            config,
            db,
            identity,
            metrics: Metrics::new(),
            creds,
            fleet: Mutex::new(Fleet::new(timeout)),
            client,
            handoff: crate::handoff::Handoff::default(),
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

    /// Seal `body` for `node` and publish it on the node's `down` topic.
    pub async fn send(&self, node: &str, body: &Down) -> Result<(), LinkError> {
        // The keys cached when the node last spoke; the store only otherwise
        // (every ack would else cost a database read).
        let cached = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .map(|s| s.peer.clone());
        let peer = match cached {
            Some(p) => p,
            None => {
                let keys = self
                    .db
                    .call({
                        let node = node.to_owned();
                        move |c| Ok(store::node(c, &node)?.map(|n| n.keys))
                    })
                    .await?;
                let Some(Ok(peer)) = keys.map(|k| k.parse()) else {
                    return Ok(());
                };
                peer
            }
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
    pub async fn queue_command(
        &self,
        node: &str,
        kind: &str,
        args: serde_json::Value,
    ) -> Result<Command, LinkError> {
        let cmd = Command {
            id: uuid::Uuid::new_v4().to_string(),
            kind: kind.to_owned(),
            args,
            issued_at: now_ms(),
        };
        let online = self
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_online(node);
        let (n, c2) = (node.to_owned(), cmd.clone());
        let sent_at = online.then(now_ms);
        self.db
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
        let cached = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .map(|s| s.peer.clone());
        let peer = match cached {
            Some(p) => p,
            None => {
                let row = self
                    .db
                    .call({
                        let node = node.to_owned();
                        move |c| store::node(c, &node)
                    })
                    .await
                    .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
                let Some(row) = row else {
                    return Err(EnvelopeError::BadKey);
                };
                if row.revoked_at.is_some() {
                    return Err(EnvelopeError::BadKey);
                }
                let peer = row.keys.parse()?;
                self.nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    node.to_owned(),
                    NodeSec {
                        peer: peer.clone(),
                        window: ReplayWindow::starting_at(row.seq_high),
                    },
                );
                peer
            }
        };
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

    /// Apply one opened message.
    async fn apply(&self, node: &str, up: Up, seq: u64) -> Result<(), LinkError> {
        let now = now_ms();
        let transition = {
            let mut fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
            match &up {
                Up::Hello { connect_id, .. } => fleet.heard(node, now, Some(connect_id)),
                Up::Will { connect_id } => fleet.will(node, connect_id),
                Up::Heartbeat(hb) => fleet.heard(node, now, Some(&hb.connect_id)),
                _ => fleet.heard(node, now, None),
            }
        };
        self.record_transitions(transition.into_iter().collect());
        let n = node.to_owned();
        match up {
            Up::Hello { .. } => {
                self.db.call(move |c| store::touch(c, &n, seq, now)).await?;
                self.send_pending(node).await?;
            }
            Up::Heartbeat(hb) => {
                self.metrics.heartbeats.inc();
                let value = serde_json::to_value(&hb).unwrap_or_default();
                self.db
                    .call(move |c| {
                        // One transaction, one fsync.
                        let tx = c.transaction()?;
                        store::record_heartbeat(&tx, &n, &value, now)?;
                        store::touch(&tx, &n, seq, now)?;
                        Ok(tx.commit()?)
                    })
                    .await?;
            }
            Up::Events { events } => {
                let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
                let total = events.len() as u64;
                let live: Vec<edgedesk_common::event::Event> = events
                    .iter()
                    .filter(|e| {
                        matches!(
                            e.body,
                            edgedesk_common::event::EventBody::Escalation(_)
                                | edgedesk_common::event::EventBody::ChatLine(_)
                                | edgedesk_common::event::EventBody::Rating(_)
                                | edgedesk_common::event::EventBody::OfflineMessage(_)
                                | edgedesk_common::event::EventBody::ConversationSummary(_)
                        )
                    })
                    .cloned()
                    .collect();
                let new = self
                    .db
                    .call(move |c| {
                        let tx = c.transaction()?;
                        let new = store::ingest(&tx, &n, &events, now)?;
                        crate::chats::ingest_transcripts(&tx, &n, &events)?;
                        store::touch(&tx, &n, seq, now)?;
                        tx.commit()?;
                        Ok(new)
                    })
                    .await? as u64;
                self.metrics.events_new.inc_by(new);
                self.metrics.events_duplicate.inc_by(total - new);
                // Acknowledge only after the commit above.
                self.send(node, &Down::EventsAck { ids }).await?;
                if !live.is_empty() {
                    self.handoff.on_events(self, node, &live).await;
                }
            }
            Up::CommandAck { id, ok, detail } => {
                let acked = self
                    .db
                    .call(move |c| {
                        let tx = c.transaction()?;
                        store::touch(&tx, &n, seq, now)?;
                        let acked = store::ack_command(&tx, &n, &id, ok, &detail, now)?;
                        tx.commit()?;
                        Ok(acked)
                    })
                    .await?;
                if acked {
                    self.metrics.commands_acked.inc();
                }
            }
            Up::Will { .. } => {}
            Up::Typing { conversation } => self.handoff.visitor_typing(&conversation),
        }
        Ok(())
    }
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

/// Poll the MQTT event loop and process messages until `shutdown`.
pub async fn run(hub: Arc<Hub>, mut eventloop: EventLoop, shutdown: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Inbound>(8192);
    let processor = {
        let hub = hub.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                match hub.open(&msg.node, &msg.payload).await {
                    Ok((up, seq)) => {
                        if let Err(e) = hub.apply(&msg.node, up, seq).await {
                            tracing::error!(node = %msg.node, error = %e, "applying a message failed");
                        }
                    }
                    Err(e) => {
                        hub.metrics.refuse(e.reason());
                        tracing::warn!(node = %msg.node, error = %e, "envelope refused");
                    }
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
