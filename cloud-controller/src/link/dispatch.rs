//! What arrives from nodes, in arrival order: open and check each envelope
//! (sender, addressee, clock skew, signature, decryption, replay window),
//! apply the batch in one store transaction (group commit), and only after
//! the commit acknowledge, update the fleet, and feed the live-chat desk.
//!
//! After the commit nothing stops the rest of the batch: a failed send is
//! logged and the node resends, but every message of a committed batch is
//! acknowledged and every fresh event reaches the desk.

use std::time::Duration;

use edgedesk_support::logging::{CLIP_ERROR_CHARS, clip, clip_to};

use edgedesk_common::envelope::{CONTROLLER, Envelope, EnvelopeError};
use edgedesk_common::event::{Event, EventBody};
use edgedesk_common::sync::{Down, Up};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Link;
use super::transport::Inbound;
use crate::downlink::now_ms;
use crate::handoff::In;
use crate::store::events::{Inbound as Stored, InboundKind};
use crate::store::{InboundOutcome, Line};

/// Most inbound messages applied in one transaction.
pub const BATCH: usize = 256;

/// Process inbound messages until the queue closes.
pub async fn run(link: Link, mut rx: mpsc::Receiver<Inbound>) {
    // Group commit: whatever arrived while the previous batch was being
    // written goes into the next one (up to BATCH).
    let mut msgs = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut msgs, BATCH).await > 0 {
        if let Err(e) = link
            .keys
            .preload(msgs.iter().map(|m| m.node.as_str()))
            .await
        {
            tracing::warn!(error = %e, "reading nodes' keys failed; each is read alone");
        }
        let mut batch = Vec::with_capacity(msgs.len());
        for msg in msgs.drain(..) {
            match open(&link, &msg.node, &msg.payload).await {
                Ok((up, seq)) => batch.push((msg.node, up, seq)),
                Err(e) => {
                    link.metrics.refuse(e.reason());
                    tracing::warn!(
                        node = %clip(&msg.node),
                        error = %clip_to(&e.to_string(), CLIP_ERROR_CHARS),
                        "envelope refused"
                    );
                }
            }
        }
        apply(&link, batch).await;
    }
}

/// Verify, open and check one envelope from `node`'s up topic.
async fn open(link: &Link, node: &str, payload: &[u8]) -> Result<(Up, u64), EnvelopeError> {
    let env = Envelope::from_json(payload)?;
    if env.from != node {
        return Err(EnvelopeError::Malformed(format!(
            "sender {} on {}'s topic",
            clip(&env.from),
            clip(node)
        )));
    }
    if env.to != CONTROLLER {
        return Err(EnvelopeError::Malformed(format!(
            "addressed to {}",
            clip(&env.to)
        )));
    }
    let opened = link.keys.open(node, &env).await;
    if matches!(opened, Ok(_) | Err(EnvelopeError::StaleKey(_))) {
        // Signed by the node: if it sealed for an older key of ours, tell
        // it the current one (it seals again what was not acknowledged).
        if let Some(current) = link.keys.should_tell(node, &env.rk, now_ms()) {
            link.downlink.send(
                node,
                Down::SealKey {
                    key: current.to_base64(),
                },
            );
        }
    }
    let plain = opened?;
    let up: Up =
        serde_json::from_slice(&plain).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    // A will was sealed at connect time and published by the broker when
    // that connection dropped, maybe hours later: it is checked against the
    // connection it names (the fleet honours it only for the current one)
    // instead of the clock and the sequence window.
    if !matches!(up, Up::Will { .. }) {
        let skew = link.config.sync.max_clock_skew_secs as i64 * 1000;
        if (env.ts - now_ms()).abs() > skew {
            return Err(EnvelopeError::Replay(env.seq));
        }
        link.keys.accept(node, env.seq)?;
    }
    let announced = match &up {
        Up::Hello { seal_key, .. } => seal_key.as_str(),
        Up::Heartbeat(hb) => hb.seal_key.as_str(),
        _ => "",
    };
    if !announced.is_empty() {
        link.keys
            .announced(node, announced)
            .await
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    }
    Ok((up, env.seq))
}

/// Apply a batch of opened messages: every database change of the batch in
/// one transaction, then, only after the commit, acknowledgements and the
/// desk's inputs in arrival order.
pub async fn apply(link: &Link, batch: Vec<(String, Up, u64)>) {
    let now = now_ms();
    if let Some(relay) = &link.relay {
        // A standby: presence is the active controller's.
        for (node, up, _) in &batch {
            relay.offer(super::relay::heard(node, up));
        }
    } else {
        let transitions: Vec<_> = {
            let mut fleet = link.presence.fleet();
            batch
                .iter()
                .filter_map(|(node, up, _)| {
                    super::relay::presence(&mut fleet, now, super::relay::heard(node, up))
                })
                .collect()
        };
        link.presence.record(transitions).await;
    }
    let mut stored = Vec::with_capacity(batch.len());
    let mut hellos = Vec::new();
    for (node, up, seq) in batch {
        let what = match up {
            // Ephemeral or answered without the store.
            Up::Typing { conversation } => {
                if !link.handoff.try_input(In::VisitorTyping {
                    chat: conversation,
                    node: node.clone(),
                }) {
                    link.metrics.handoff_dropped.inc();
                }
                continue;
            }
            Up::Will { .. } => continue,
            Up::ResendCommands => {
                if let Err(e) = link.downlink.send_pending(&node, None).await {
                    tracing::warn!(%node, error = %e, "resending commands failed");
                }
                continue;
            }
            Up::Hello { .. } => {
                hellos.push(node.clone());
                InboundKind::Seen
            }
            Up::Heartbeat(hb) => InboundKind::Heartbeat(hb),
            Up::Events { events } => InboundKind::Events(events),
            Up::CommandAck { id, ok, detail } => InboundKind::CommandAck { id, ok, detail },
        };
        stored.push(Stored { node, seq, what });
    }
    if stored.is_empty() {
        return;
    }
    let shared = !link.config.mqtt.shared_group.is_empty();
    let (stored, outcomes) = match link.store.apply_inbound(stored, now, shared).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "applying a batch of messages failed; nodes will resend");
            return;
        }
    };
    after_commit(link, stored, outcomes).await;
    for node in hellos {
        if let Err(e) = link.downlink.send_pending(&node, None).await {
            tracing::warn!(%node, error = %e, "sending pending commands failed");
        }
    }
}

/// Acknowledge and hand on what a committed batch brought, message by
/// message; a failure with one never skips the others.
pub async fn after_commit(link: &Link, stored: Vec<Stored>, outcomes: Vec<InboundOutcome>) {
    for (m, outcome) in stored.into_iter().zip(outcomes) {
        match (m.what, outcome) {
            (
                InboundKind::Events(events),
                InboundOutcome::Events {
                    total,
                    new,
                    refused,
                    fresh,
                },
            ) => {
                link.metrics.events_new.inc_by(new as u64);
                link.metrics.events_duplicate.inc_by((total - new) as u64);
                link.metrics.events_foreign.inc_by(refused as u64);
                // Acknowledge only after the commit above.
                let ids = events.into_iter().map(|e| e.id).collect();
                if !link.downlink.send(&m.node, Down::EventsAck { ids }) {
                    tracing::debug!(node = %m.node, "acknowledgement dropped; the node resends");
                }
                for (input, trace) in desk_inputs(&m.node, fresh) {
                    link.handoff.input_traced(input, trace).await;
                }
            }
            (_, InboundOutcome::Replayed) => {
                link.metrics.refuse("replay");
                tracing::warn!(node = %m.node, seq = m.seq, "envelope refused: another replica took its number");
            }
            (_, InboundOutcome::CommandAcked(true)) => {
                link.metrics.commands_acked.inc();
            }
            (InboundKind::Heartbeat(_), _) => {
                link.metrics.heartbeats.inc();
            }
            _ => {}
        }
    }
}

/// What newly stored events from `node` mean for live chats, each with the
/// trace context of its ingestion span (a child of the node's span that
/// recorded it) when the event carried one.
fn desk_inputs(node: &str, events: Vec<Event>) -> Vec<(In, Option<String>)> {
    events
        .into_iter()
        .filter_map(|e| {
            let trace = e.trace.as_deref().and_then(|parent| {
                let span = edgedesk_support::traced_span!(
                    "controller.ingest",
                    Some(parent),
                    node = %clip(node),
                    kind = e.body.kind(),
                    event = %clip(&e.id)
                );
                edgedesk_support::telemetry::traceparent(&span)
            });
            desk_input(node, e).map(|input| (input, trace))
        })
        .collect()
}

fn desk_input(node: &str, e: Event) -> Option<In> {
    match e.body {
        EventBody::Escalation(x) => Some(In::Escalated {
            chat: x.conversation,
            node: node.to_owned(),
            lang: x.lang.as_str().to_owned(),
            at: e.at,
        }),
        EventBody::ChatLine(l) => Some(In::VisitorLine {
            chat: l.conversation,
            line: Line {
                sender: "visitor".into(),
                text: l.line.text,
                at: l.line.at,
                author: None,
            },
        }),
        EventBody::ConversationSummary(s) if s.escalated => Some(In::VisitorEnded {
            chat: s.conversation,
        }),
        EventBody::EscalationWithdrawn(w) => Some(In::Withdrawn {
            chat: w.conversation,
            reason: crate::store::events::withdrawal(&w.reason),
        }),
        EventBody::VisitorPresence(p) => Some(In::VisitorPresence {
            chat: p.conversation,
            present: p.present,
        }),
        _ => None,
    }
}

/// How often the active controller prunes the shared replay window.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Fleet timeouts and the sealing keys' rotation every second; every
/// `command_retry_secs`, unacknowledged commands of online nodes that were
/// not sent within that time go again.
pub async fn ticker(link: Link, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let every = link.config.sync.seal_key_rotate_secs as i64 * 1000;
    let overlap = link.config.sync.seal_key_overlap_secs as i64 * 1000;
    let retry = Duration::from_secs(link.config.sync.command_retry_secs.max(1));
    let mut last_retry = tokio::time::Instant::now();
    let mut last_prune = tokio::time::Instant::now();
    let shared = !link.config.mqtt.shared_group.is_empty();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if shared && last_prune.elapsed() >= PRUNE_EVERY {
                    last_prune = tokio::time::Instant::now();
                    if let Err(e) = link.store.prune_inbound_seqs().await {
                        tracing::warn!(error = %e, "pruning the shared replay window failed");
                    }
                }
                let ts = link.presence.fleet().tick(now_ms());
                link.presence.record(ts).await;
                match link.keys.sealing().tick(now_ms(), every, overlap) {
                    Ok(gone) => link.keys.erased(&gone),
                    Err(e) => tracing::error!(error = %e, "rotating the sealing keys failed; the current key stays"),
                }
                if last_retry.elapsed() >= retry {
                    last_retry = tokio::time::Instant::now();
                    let online = link.store.online_nodes().await.unwrap_or_default();
                    let due = now_ms() - retry.as_millis() as i64;
                    for node in online {
                        if let Err(e) = link.downlink.send_pending(&node, Some(due)).await {
                            tracing::warn!(%node, error = %e, "resending commands failed");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use edgedesk_common::chat::Lang;
    use edgedesk_common::envelope::Identity;
    use edgedesk_common::event::Escalation;

    use super::*;
    use crate::downlink::Downlink;
    use crate::fleet::Fleet;
    use crate::handoff::{Handoff, Msg};
    use crate::metrics::Metrics;

    fn escalation(id: &str, chat: &str) -> Event {
        Event {
            id: id.into(),
            at: 1,
            trace: None,
            body: EventBody::Escalation(Escalation {
                conversation: chat.into(),
                lang: Lang::En,
                reason: "requested".into(),
                last_text: String::new(),
                intents: vec![],
                transcript: vec![],
            }),
        }
    }

    /// Before: after the commit, a failed acknowledgement returned early and
    /// skipped the rest of the batch — an escalation could be stored and
    /// never routed. Now every message of a committed batch goes on.
    #[tokio::test]
    async fn a_failed_acknowledgement_skips_nothing_else_in_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_store(&dir.path().join("c.db"));
        let metrics = Arc::new(Metrics::new());
        let fleet = Arc::new(Mutex::new(Fleet::new(10_000)));
        // A publisher that is gone: every send down fails.
        let (out_tx, out_rx) = mpsc::channel(1);
        drop(out_rx);
        let downlink = Downlink::new(store.clone(), fleet.clone(), out_tx, metrics.clone());
        let (desk_tx, mut desk_rx) = mpsc::channel(16);
        let handoff = Handoff::new(desk_tx);
        let link = Link {
            config: crate::config::Config::default(),
            store: store.clone(),
            identity: Identity::from_secret(&[1; 64]),
            keys: super::super::Keys::new(
                store.clone(),
                Arc::new(super::super::Sealing::new(
                    edgedesk_common::sealing::Keyring::new([1; 32], 0),
                    dir.path().join("c.seal"),
                )),
                crate::broker::Credentials::default(),
            ),
            presence: super::super::Presence::new(
                fleet,
                store.clone(),
                metrics.clone(),
                handoff.clone(),
                10,
            ),
            downlink,
            handoff,
            metrics: metrics.clone(),
            creds: crate::broker::Credentials::default(),
            dynsec: None,
            relay: None,
        };
        let batch = vec![
            Stored {
                node: "a".into(),
                seq: 1,
                what: InboundKind::Events(vec![escalation("e1", "chat-a")]),
            },
            Stored {
                node: "b".into(),
                seq: 1,
                what: InboundKind::Events(vec![escalation("e2", "chat-b")]),
            },
        ];
        let (stored, outcomes) = store.apply_inbound(batch, 1, false).await.unwrap();
        after_commit(&link, stored, outcomes).await;
        let mut routed = Vec::new();
        while let Ok(Msg::Input(In::Escalated { chat, node, .. })) = desk_rx.try_recv() {
            routed.push((chat, node));
        }
        assert_eq!(
            routed,
            vec![
                ("chat-a".to_owned(), "a".to_owned()),
                ("chat-b".to_owned(), "b".to_owned())
            ]
        );
        assert_eq!(metrics.events_new.get(), 2);
        assert_eq!(metrics.outgoing_dropped.get(), 2, "both acks failed");
    }
}
