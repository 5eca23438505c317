//! The MQTT side of the uplink: connect with the pinned CA and the broker
//! login from enrolment, open and check what arrives on the node's `down`
//! topic, drain the outbox in batches, send heartbeats.
//!
//! The event loop only parses and hands work on: acknowledgements to the
//! drain, commands to [`super::exec`] (bounded 256; when full the newest is
//! dropped and counted — the controller resends anything unacknowledged).

use std::sync::Arc;
use std::time::Duration;

use edgedesk_common::envelope::{
    CONTROLLER, Envelope, EnvelopeError, ReplayWindow, SeqCounter, topic,
};
use edgedesk_common::event::{Event, EventBody};
use edgedesk_common::sync::{Down, DownError, Heartbeat, Up};
use edgedesk_nlu::mask::mask_personal;
use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};

use super::exec::{Exec, Work};
use super::keys::NodeKeys;
use super::seal::{ENVELOPE_QOS, Sealer};
use super::sync::{Next, Outbox, Streams};
use super::{IdentityFile, Uplink, UplinkError, enroll};
use crate::session::now_ms;
use crate::store::{KV_COMPACTED, Store};

/// Mask personal data in every text that leaves the branch, with the one
/// masking function: transcripts (bot lines too: they may repeat what the
/// visitor typed), escalations, live chat lines, summaries, offline messages
/// and flow slots. Kept: the contact a visitor left for a call-back (given
/// for that purpose, shown to the agent who calls back).
pub fn outgoing(mut e: Event, mask: bool) -> Event {
    if !mask {
        return e;
    }
    let lines = |t: &mut Vec<edgedesk_common::event::TranscriptLine>| {
        for l in t.iter_mut() {
            l.text = mask_personal(&l.text);
        }
    };
    match &mut e.body {
        EventBody::Escalation(x) => {
            x.last_text = mask_personal(&x.last_text);
            lines(&mut x.transcript);
        }
        EventBody::OfflineMessage(x) => x.message = mask_personal(&x.message),
        EventBody::ConversationSummary(x) => lines(&mut x.transcript),
        EventBody::ChatLine(x) => x.line.text = mask_personal(&x.line.text),
        EventBody::FlowCompleted(x) => {
            for v in x.slots.values_mut() {
                *v = mask_personal(v);
            }
        }
        EventBody::Sample(x) => x.text = mask_personal(&x.text),
        EventBody::Rating(_)
        | EventBody::EscalationWithdrawn(_)
        | EventBody::VisitorPresence(_) => {}
    }
    e
}

const KV_DOWN_SEQ: &str = "controller_seq_high";
/// The top of the sequence numbers this node reserved (see [`SeqCounter`]).
pub const KV_SEQ_RESERVED: &str = "seq_reserved";

/// Reserve this run's block of sequence numbers, stored before any is used.
async fn reserve_seq(store: &Store) -> Result<SeqCounter, UplinkError> {
    let fail = |e: crate::store::StoreError| UplinkError::Store(e.to_string());
    let reserved = store
        .kv_get(KV_SEQ_RESERVED)
        .await
        .map_err(fail)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let now = chrono::Utc::now().timestamp_micros().max(1) as u64;
    let (seq, top) = SeqCounter::resume(reserved, now);
    store
        .kv_set(KV_SEQ_RESERVED, &top.to_string())
        .await
        .map_err(fail)?;
    Ok(seq)
}

/// Commands waiting for the executor.
const WORK_QUEUE: usize = 256;

pub(super) async fn run(u: Uplink, typing: mpsc::Receiver<String>) -> Result<(), UplinkError> {
    let cfg = u.cloud.clone();
    let mut file = IdentityFile::load_or_create(&cfg.identity_path, &cfg.node_id)?;
    tokio::select! {
        _ = u.shutdown.cancelled() => return Ok(()),
        r = enroll(&cfg, &mut file) => r?,
    }
    file.save(&cfg.identity_path)?;
    let identity = file.identity()?;
    let bad = |message: &str| UplinkError::Identity {
        path: cfg.identity_path.display().to_string(),
        message: message.into(),
    };
    let controller = file
        .controller
        .clone()
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| bad("bad controller keys"))?;
    let mqtt = file.mqtt.clone().ok_or_else(|| bad("no broker pinned"))?;
    let models_endpoint = file.models.clone();
    let seq = reserve_seq(&u.store).await?;
    let sealer = Arc::new(Sealer::new(cfg.node_id.clone(), identity, controller, seq));
    let keys = Arc::new(NodeKeys::new(
        file,
        cfg.identity_path.clone(),
        cfg.seal_key_rotate_secs,
        cfg.seal_key_overlap_secs,
    ));
    let keys_task = tokio::spawn(super::keys::run(keys.clone(), u.shutdown.clone()));
    // Each broker connection has its own id, carried by its hello, its
    // heartbeats and its last will: the controller honours a will only for
    // the connection it names, so an old will (replayed, or published late)
    // is ignored, and a genuine one is not refused for its age.
    let connect_id = uuid::Uuid::new_v4().to_string();
    let (connect_tx, connect_rx) = watch::channel(connect_id.clone());

    let mut opts = MqttOptions::new(cfg.node_id.clone(), mqtt.host.clone(), mqtt.port);
    opts.set_credentials(mqtt.username.clone(), mqtt.password.clone());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_clean_session(true);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_last_will(last_will(&sealer, &connect_id));
    if mqtt.tls {
        let ca = mqtt.ca_pem.as_deref().unwrap_or_default();
        let tls = edgedesk_support::tls::pinned_client(ca).map_err(|e| bad(&e.to_string()))?;
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let (ack_tx, ack_rx) = mpsc::channel::<Vec<String>>(256);
    let (work_tx, work_rx) = mpsc::channel::<Work>(WORK_QUEUE);
    let high = u
        .store
        .kv_get(KV_DOWN_SEQ)
        .await
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (high_tx, high_rx) = watch::channel(high);
    let u = Arc::new(u);
    let receiver = Receiver {
        u: u.clone(),
        window: ReplayWindow::starting_at(high),
        ack_tx,
        work_tx,
        high_tx,
        client: client.clone(),
        sealer: sealer.clone(),
        keys: keys.clone(),
        connect_id: connect_tx,
        renewing: false,
    };
    let poll = tokio::spawn(receiver.poll(eventloop));
    let persist = tokio::spawn(persist_high(u.store.clone(), high_rx));
    let exec = Exec {
        sessions: u.sessions.clone(),
        models: u.models.clone(),
        store: u.store.clone(),
        metrics: u.metrics.clone(),
        client: client.clone(),
        sealer: sealer.clone(),
        endpoint: models_endpoint,
        streams: Streams::new(1000),
        inflight: Default::default(),
    };
    let exec = tokio::spawn(exec.run(work_rx, u.shutdown.clone()));
    let typing = tokio::spawn(forward_typing(typing, client.clone(), sealer.clone()));
    let beat = tokio::spawn(heartbeats(
        u.clone(),
        client.clone(),
        sealer.clone(),
        keys.clone(),
        connect_rx,
    ));
    drain(&u, &client, &sealer, ack_rx).await;
    let _ = client.disconnect().await;
    let _ = beat.await;
    typing.abort();
    let _ = exec.await;
    let _ = poll.await;
    let _ = persist.await;
    let _ = keys_task.await;
    Ok(())
}

/// Keep the latest replay high-water mark in the store: one write at a time,
/// coalescing marks that arrive meanwhile; the last one is written when the
/// receiver stops. A mark lost in a crash only lets the controller's newest
/// few messages be offered again, and commands run once by id.
async fn persist_high(store: Store, mut rx: watch::Receiver<u64>) {
    let mut written = *rx.borrow_and_update();
    loop {
        let open = rx.changed().await.is_ok();
        let high = *rx.borrow_and_update();
        if high != written {
            if let Err(e) = store.kv_set(KV_DOWN_SEQ, &high.to_string()).await {
                tracing::warn!(error = %e, "saving the controller's sequence mark failed");
            }
            written = high;
        }
        if !open {
            return;
        }
    }
}

/// The MQTT event loop's task.
struct Receiver {
    u: Arc<Uplink>,
    window: ReplayWindow,
    ack_tx: mpsc::Sender<Vec<String>>,
    work_tx: mpsc::Sender<Work>,
    /// The replay window's high-water mark, for [`persist_high`].
    high_tx: watch::Sender<u64>,
    client: AsyncClient,
    sealer: Arc<Sealer>,
    keys: Arc<NodeKeys>,
    /// The current connection's id (a new one before each reconnect).
    connect_id: watch::Sender<String>,
    /// Reconnecting on purpose: the last will must be sealed for the
    /// controller's new key (the old one is erased after the overlap).
    renewing: bool,
}

impl Receiver {
    async fn poll(mut self, mut eventloop: EventLoop) {
        let node = self.sealer.node.clone();
        let mut backoff = Duration::from_millis(200);
        loop {
            let ev = tokio::select! {
                _ = self.u.shutdown.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(200);
                    tracing::info!(%node, "connected to the broker");
                    self.u.metrics.uplink_connected.set(1);
                    self.u.sessions.broadcast_link(true);
                    // Requests go through the client's queue, which this
                    // loop drains: never await them here.
                    let _ = self
                        .client
                        .try_subscribe(topic::down(&node), QoS::AtLeastOnce);
                    let hello = Up::Hello {
                        connect_id: self.connect_id.borrow().clone(),
                        sw_version: env!("CARGO_PKG_VERSION").into(),
                        seal_key: self.keys.current(),
                    };
                    let _ = self.client.try_publish(
                        topic::up(&node),
                        ENVELOPE_QOS,
                        false,
                        self.sealer.seal(&hello),
                    );
                    let _ = self.u.link_up.send(true);
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => self.on_down(&p.payload).await,
                Ok(_) => {}
                Err(e) => {
                    let renewing = std::mem::take(&mut self.renewing);
                    if renewing {
                        tracing::info!(%node, "reconnecting to seal the last will for the controller's new key");
                    } else if *self.u.link_up.borrow() {
                        tracing::warn!(%node, error = %e, "broker connection lost; retrying");
                        self.u.sessions.broadcast_link(false);
                    }
                    self.u.metrics.uplink_connected.set(0);
                    let _ = self.u.link_up.send(false);
                    // The next connection gets its own id and will.
                    let id = uuid::Uuid::new_v4().to_string();
                    eventloop
                        .mqtt_options
                        .set_last_will(last_will(&self.sealer, &id));
                    self.connect_id.send_replace(id);
                    if renewing {
                        // Our own disconnect: straight back.
                        continue;
                    }
                    tokio::select! {
                        _ = self.u.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        let _ = self.u.link_up.send(false);
    }

    fn open(&mut self, payload: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let env = Envelope::from_json(payload)?;
        if env.from != CONTROLLER || env.to != self.sealer.node {
            return Err(EnvelopeError::Malformed("wrong sender or recipient".into()));
        }
        let plain = self.keys.open(&env, &self.sealer.controller)?;
        self.window.accept(env.seq)?;
        Ok(plain)
    }

    async fn on_down(&mut self, payload: &[u8]) {
        let plain = match self.open(payload) {
            Ok(p) => p,
            Err(e) => {
                self.u.metrics.uplink_refused.inc(e.reason());
                tracing::warn!(
                    error = %edgedesk_support::logging::clip_to(
                        &e.to_string(),
                        edgedesk_support::logging::CLIP_ERROR_CHARS
                    ),
                    "message from the broker refused"
                );
                return;
            }
        };
        // Persisted off this loop: a slow disk must not slow the link.
        self.high_tx.send_replace(self.window.highest());
        let work = match Down::decode(&plain) {
            Ok(Down::EventsAck { ids }) => {
                let _ = self.ack_tx.try_send(ids);
                return;
            }
            Ok(Down::Command(cmd)) => Work::Command(cmd),
            Ok(Down::Typing { conversation }) => Work::Typing(conversation),
            Ok(Down::SealKey { key }) => {
                if let Some(to) = self.keys.controller_key(&key) {
                    self.sealer.set_controller_key(to);
                    // The will of this connection was sealed for the old
                    // key: reconnect so the next one is sealed for the new.
                    if self.client.try_disconnect().is_ok() {
                        self.renewing = true;
                    }
                }
                return;
            }
            Ok(Down::QueueStatus {
                conversation,
                position,
                agents_online,
            }) => Work::Queue {
                conversation,
                position,
                agents_online,
            },
            Err(DownError::Command { id, error }) => Work::Refuse {
                id,
                reason: error.to_string(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "unreadable message from the controller");
                return;
            }
        };
        if self.work_tx.try_send(work).is_err() {
            // The controller resends what is not acknowledged.
            self.u.metrics.reject("uplink_work_full");
        }
    }
}

async fn forward_typing(
    mut typing: mpsc::Receiver<String>,
    client: AsyncClient,
    sealer: Arc<Sealer>,
) {
    while let Some(conversation) = typing.recv().await {
        let up = Up::Typing { conversation };
        // Ephemeral: dropped when the client's queue is full.
        let _ = client.try_publish(
            topic::up(&sealer.node),
            ENVELOPE_QOS,
            false,
            sealer.seal(&up),
        );
    }
}

/// The will the broker publishes if connection `connect_id` drops.
fn last_will(sealer: &Sealer, connect_id: &str) -> LastWill {
    let will = Up::Will {
        connect_id: connect_id.to_owned(),
    };
    LastWill::new(
        topic::up(&sealer.node),
        sealer.seal(&will),
        QoS::AtLeastOnce,
        false,
    )
}

async fn heartbeats(
    u: Arc<Uplink>,
    client: AsyncClient,
    sealer: Arc<Sealer>,
    keys: Arc<NodeKeys>,
    connect_id: watch::Receiver<String>,
) {
    let mut connected = u.link_up.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(u.cloud.heartbeat_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = u.shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = connected.changed() => {}
            // A new sealing key of ours is on disk: announce it now.
            _ = keys.rotated.notified() => {}
        }
        if !*connected.borrow() {
            continue;
        }
        let id = connect_id.borrow().clone();
        let mut hb = heartbeat(&u, &id).await;
        hb.seal_key = keys.current();
        let _ = sealer.send(&client, &Up::Heartbeat(Box::new(hb))).await;
    }
}

/// The node's current state, as reported upstream.
pub async fn heartbeat(u: &Uplink, connect_id: &str) -> Heartbeat {
    let model = u.models.active.get();
    Heartbeat {
        connect_id: connect_id.to_owned(),
        // Filled in by the sender, which holds the keys.
        seal_key: String::new(),
        sw_version: env!("CARGO_PKG_VERSION").into(),
        model_name: model.manifest().name.clone(),
        model_version: model.manifest().version.to_string(),
        uptime_s: u.started.elapsed().as_secs(),
        open_sessions: u.sessions.registry.len() as u64,
        outbox_depth: u.store.outbox_depth().await.unwrap_or(0),
        outbox_compacted: u
            .store
            .kv_get(KV_COMPACTED)
            .await
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        free_disk_bytes: fs4::available_space(&u.data_dir).unwrap_or(0),
        model_health: Some(u.models.health()),
        shadow: u.models.shadow.report(edgedesk_support::now_ms()),
    }
}

/// Send the outbox up, batch by batch, until shutdown.
async fn drain(
    u: &Uplink,
    client: &AsyncClient,
    sealer: &Sealer,
    mut acks: mpsc::Receiver<Vec<String>>,
) {
    let cfg = &u.cloud;
    let mut link = u.link_up.subscribe();
    let mut state = Outbox::new(cfg.ack_timeout_secs as i64 * 1000);
    let mut last_compact = tokio::time::Instant::now() - Duration::from_secs(3600);
    loop {
        if u.shutdown.is_cancelled() {
            break;
        }
        if last_compact.elapsed() >= Duration::from_secs(5) {
            last_compact = tokio::time::Instant::now();
            compact(u).await;
        }
        let up = *link.borrow_and_update();
        if up != state.is_connected() {
            state.link(up);
        }
        match state.next(now_ms()) {
            Next::WaitForLink => {
                tokio::select! {
                    _ = u.shutdown.cancelled() => break,
                    _ = link.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
            Next::WaitForAcks { deadline } => {
                let wait = Duration::from_millis((deadline - now_ms()).max(0) as u64);
                tokio::select! {
                    _ = u.shutdown.cancelled() => break,
                    _ = link.changed() => {}
                    _ = tokio::time::sleep(wait) => {
                        tracing::debug!("no acknowledgement in time; sending again");
                    }
                    ids = acks.recv() => {
                        let Some(ids) = ids else { break };
                        acked(u, &mut state, ids).await;
                    }
                }
            }
            Next::Send => {
                let batch = match u.store.outbox_peek(cfg.batch_max).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "reading the outbox failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if batch.is_empty() {
                    tokio::select! {
                        _ = u.shutdown.cancelled() => break,
                        _ = u.outbox.notified() => {}
                        _ = link.changed() => {}
                        ids = acks.recv() => {
                            // Late acknowledgements of an earlier send.
                            let Some(ids) = ids else { break };
                            acked(u, &mut state, ids).await;
                        }
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                let ids: Vec<String> = batch.iter().map(|e| e.event.id.clone()).collect();
                let events: Vec<Event> = batch
                    .into_iter()
                    .map(|e| outgoing(e.event, cfg.mask_personal_data))
                    .collect();
                let n = events.len() as u64;
                if sealer.send(client, &Up::Events { events }).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                u.metrics.uplink_sent.inc_by(n);
                state.sent(ids, now_ms());
            }
        }
    }
}

/// Delete what the controller acknowledged (late acks of earlier sends count too).
async fn acked(u: &Uplink, state: &mut Outbox, ids: Vec<String>) {
    state.acked(&ids);
    match u.store.outbox_delete(ids).await {
        Ok(deleted) => {
            u.metrics.uplink_acked.inc_by(deleted as u64);
        }
        Err(e) => tracing::error!(error = %e, "deleting acknowledged events failed"),
    }
}

async fn compact(u: &Uplink) {
    match u.store.outbox_compact(u.cloud.outbox_budget_bytes).await {
        Ok(c) => {
            u.metrics.outbox_compacted.set(c.dropped_total as i64);
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

#[cfg(test)]
mod tests {
    use edgedesk_common::chat::{Lang, Sender};
    use edgedesk_common::event::*;

    use super::outgoing;

    const RAW: &str = "card 4111 1111 1111 1111, phone 13812345678, mail li@example.cn";

    fn line() -> TranscriptLine {
        TranscriptLine {
            id: 1,
            from: Sender::Bot,
            text: RAW.into(),
            at: 1,
        }
    }

    /// Every kind of event that carries text, with personal data everywhere.
    fn every_kind() -> Vec<EventBody> {
        vec![
            EventBody::ConversationSummary(ConversationSummary {
                conversation: "c".into(),
                lang: Lang::En,
                started_at: 0,
                ended_at: 1,
                visitor_turns: 1,
                intents: vec![],
                escalated: false,
                reason: "goodbye".into(),
                transcript: vec![line()],
            }),
            EventBody::Escalation(Escalation {
                conversation: "c".into(),
                lang: Lang::En,
                reason: "requested".into(),
                last_text: RAW.into(),
                intents: vec![],
                transcript: vec![line()],
            }),
            EventBody::OfflineMessage(OfflineMessage {
                conversation: "c".into(),
                lang: Lang::Zh,
                name: "Li".into(),
                contact: "13812345678".into(),
                message: RAW.into(),
            }),
            EventBody::FlowCompleted(FlowCompleted {
                conversation: "c".into(),
                flow: "book_appointment".into(),
                slots: [("phone".to_owned(), RAW.to_owned())].into(),
            }),
            EventBody::ChatLine(ChatLine {
                conversation: "c".into(),
                line: line(),
            }),
        ]
    }

    #[test]
    fn every_text_that_leaves_is_masked_but_the_call_back_contact() {
        for body in every_kind() {
            let kind = body.kind();
            let e = outgoing(
                Event {
                    trace: None,
                    id: "e".into(),
                    at: 1,
                    body,
                },
                true,
            );
            let mut json = serde_json::to_value(&e).unwrap();
            if let Some(contact) = json.pointer_mut("/contact") {
                assert_eq!(contact, "13812345678", "the call-back contact stays");
                *contact = serde_json::Value::Null;
            }
            let text = json.to_string();
            for raw in ["4111", "13812345678", "li@example.cn"] {
                assert!(!text.contains(raw), "{kind}: {raw} left the branch: {text}");
            }
            assert!(
                text.contains("[card]") && text.contains("[phone]") && text.contains("[email]"),
                "{kind}: {text}"
            );
            // Off: sent as written (for deployments that mask elsewhere).
            let e = outgoing(e, false);
            assert!(serde_json::to_string(&e).unwrap().contains("[card]"));
        }
    }
}
