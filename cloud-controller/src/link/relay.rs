//! Active/active ingestion (`mqtt.shared_group`, docs/REPLICAS.md).
//!
//! Every replica, standbys too, joins one MQTT shared subscription, so the
//! broker hands each node message to one of them, which opens, checks and
//! stores it (the replay window is the database's, see
//! `store::events::take_seq`). What only the active controller may do — send
//! down to nodes (it alone numbers downlink envelopes), keep presence, run
//! the live-chat desk — a standby hands to it as [`Relayed`] frames over
//! PostgreSQL `NOTIFY` on [`CHANNEL`]; the active controller `LISTEN`s on a
//! connection of its own ([`listen`]) and applies them ([`apply`]).
//!
//! Queue policy: a standby's relay queue is bounded ([`QUEUE`]).
//! Acknowledgements, commands and presence are offered and dropped when it
//! is full (counted in `relay_dropped`: the node resends what was not
//! acknowledged, commands go again, the next heartbeat refreshes presence);
//! the desk's inputs wait for room, as they do in a single controller.

use std::time::Duration;

use edgedesk_common::sync::{Down, Up};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Link;
use crate::downlink::{Outgoing, now_ms};
use crate::handoff::{In, Msg};
use crate::store::Line;

/// The PostgreSQL channel standbys notify and the active controller listens on.
pub const CHANNEL: &str = "edgedesk_relay";
/// Largest payload sent in one notification (PostgreSQL refuses 8,000 bytes).
const MAX_PAYLOAD: usize = 7_000;
/// Capacity of a standby's relay queue.
pub const QUEUE: usize = 8192;

/// What a standby hands the active controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Relayed {
    /// Seal `down` for `node` and publish it.
    Send { node: String, down: Down },
    /// A message from `node` arrived (presence): with the connection it
    /// named, whether it was the broker's will for that connection, and
    /// the sealing key it announced.
    Heard {
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connect_id: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        will: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seal_key: Option<String>,
    },
    /// An input for the live-chat desk, with its trace context.
    Desk {
        input: DeskInput,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<String>,
    },
}

/// The desk inputs node traffic causes, on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum DeskInput {
    Escalated {
        chat: String,
        node: String,
        lang: String,
        at: i64,
    },
    VisitorLine {
        chat: String,
        line: Line,
    },
    VisitorEnded {
        chat: String,
    },
    Withdrawn {
        chat: String,
        reason: String,
    },
    VisitorPresence {
        chat: String,
        present: bool,
    },
    VisitorTyping {
        chat: String,
        node: String,
    },
}

impl DeskInput {
    /// The wire form of a desk input node traffic causes; `None` for the
    /// others (consoles, ticks: never a standby's).
    pub fn from_input(input: In) -> Option<DeskInput> {
        Some(match input {
            In::Escalated {
                chat,
                node,
                lang,
                at,
            } => DeskInput::Escalated {
                chat,
                node,
                lang,
                at,
            },
            In::VisitorLine { chat, line } => DeskInput::VisitorLine { chat, line },
            In::VisitorEnded { chat } => DeskInput::VisitorEnded { chat },
            In::Withdrawn { chat, reason } => DeskInput::Withdrawn { chat, reason },
            In::VisitorPresence { chat, present } => DeskInput::VisitorPresence { chat, present },
            In::VisitorTyping { chat, node } => DeskInput::VisitorTyping { chat, node },
            _ => return None,
        })
    }

    pub fn into_input(self) -> In {
        match self {
            DeskInput::Escalated {
                chat,
                node,
                lang,
                at,
            } => In::Escalated {
                chat,
                node,
                lang,
                at,
            },
            DeskInput::VisitorLine { chat, line } => In::VisitorLine { chat, line },
            DeskInput::VisitorEnded { chat } => In::VisitorEnded { chat },
            DeskInput::Withdrawn { chat, reason } => In::Withdrawn { chat, reason },
            DeskInput::VisitorPresence { chat, present } => In::VisitorPresence { chat, present },
            DeskInput::VisitorTyping { chat, node } => In::VisitorTyping { chat, node },
        }
    }
}

/// What presence needs of a message `node` sent.
pub fn heard(node: &str, up: &Up) -> Relayed {
    let (connect_id, will, seal_key) = match up {
        Up::Hello {
            connect_id,
            seal_key,
            ..
        } => (Some(connect_id.clone()), false, Some(seal_key.clone())),
        Up::Will { connect_id } => (Some(connect_id.clone()), true, None),
        Up::Heartbeat(hb) => (
            Some(hb.connect_id.clone()),
            false,
            Some(hb.seal_key.clone()),
        ),
        _ => (None, false, None),
    };
    Relayed::Heard {
        node: node.to_owned(),
        connect_id,
        will,
        seal_key: seal_key.filter(|k| !k.is_empty()),
    }
}

/// What a message heard from a node means for the fleet's presence (for a
/// [`Relayed::Heard`]; any other frame means nothing).
pub fn presence(
    fleet: &mut crate::fleet::Fleet,
    now: i64,
    heard: Relayed,
) -> Option<crate::fleet::Transition> {
    let Relayed::Heard {
        node,
        connect_id,
        will,
        ..
    } = heard
    else {
        return None;
    };
    match (will, connect_id) {
        (true, Some(c)) => fleet.will(&node, &c),
        (true, None) => None,
        (false, c) => fleet.heard(&node, now, c.as_deref()),
    }
}

/// A standby's handle on its relay queue; cheap to clone.
#[derive(Clone)]
pub struct Relay {
    tx: mpsc::Sender<Relayed>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Relay {
    pub fn new(
        tx: mpsc::Sender<Relayed>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Relay {
        Relay { tx, metrics }
    }

    /// Offer a frame; dropped and counted when the queue is full.
    pub fn offer(&self, frame: Relayed) {
        if self.tx.try_send(frame).is_err() {
            self.metrics.relay_dropped.inc();
        }
    }

    /// Queue a frame, waiting for room (the desk's inputs).
    pub async fn send(&self, frame: Relayed) {
        let _ = self.tx.send(frame).await;
    }
}

/// A standby's outgoing queue (what its link would publish) into relay
/// frames, until the queue closes. Revocations never come from a standby.
pub async fn forward_outgoing(relay: Relay, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(out) = rx.recv().await {
        if let Outgoing::Send { node, down } = out {
            relay.offer(Relayed::Send { node, down });
        }
    }
}

/// A standby's desk channel into relay frames, until the channel closes.
/// Console messages never reach a standby's desk channel (it serves none).
pub async fn forward_desk(relay: Relay, mut rx: mpsc::Receiver<Msg>) {
    while let Some(msg) = rx.recv().await {
        let (input, trace) = match msg {
            Msg::Input(input) => (input, None),
            Msg::Traced { input, trace } => (input, Some(trace)),
            _ => continue,
        };
        let Some(input) = DeskInput::from_input(input) else {
            continue;
        };
        if matches!(input, DeskInput::VisitorTyping { .. }) {
            relay.offer(Relayed::Desk { input, trace });
        } else {
            relay.send(Relayed::Desk { input, trace }).await;
        }
    }
}

/// Pack frames into notification payloads (JSON arrays) of at most
/// [`MAX_PAYLOAD`] bytes, in order; a frame too large alone is returned
/// in the second list.
pub fn pack(frames: Vec<Relayed>) -> (Vec<String>, Vec<Relayed>) {
    let mut payloads = Vec::new();
    let mut too_large = Vec::new();
    let mut current = String::from("[");
    for frame in frames {
        let json = serde_json::to_string(&frame).unwrap_or_default();
        if json.len() + 2 > MAX_PAYLOAD {
            too_large.push(frame);
            continue;
        }
        if current.len() + json.len() + 2 > MAX_PAYLOAD {
            current.push(']');
            payloads.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&json);
    }
    if current.len() > 1 {
        current.push(']');
        payloads.push(current);
    }
    (payloads, too_large)
}

/// A standby's notifier: drain the relay queue in batches, one round trip
/// per batch, until it closes.
pub async fn notify(
    store: crate::store::Store,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut rx: mpsc::Receiver<Relayed>,
) {
    let mut frames = Vec::with_capacity(256);
    while rx.recv_many(&mut frames, 256).await > 0 {
        let n = frames.len() as u64;
        let (payloads, too_large) = pack(std::mem::take(&mut frames));
        for f in &too_large {
            tracing::warn!(frame = ?f, "a relay frame too large for a notification; dropped (the node resends)");
        }
        metrics.relay_dropped.inc_by(too_large.len() as u64);
        let n = n - too_large.len() as u64;
        match store.notify(CHANNEL, payloads).await {
            Ok(()) => {
                metrics.relay_sent.inc_by(n);
            }
            Err(e) => {
                metrics.relay_dropped.inc_by(n);
                tracing::warn!(error = %e, frames = n, "relaying to the active controller failed; nodes resend");
            }
        }
    }
}

/// The active controller's listener: `LISTEN` on [`CHANNEL`] on a
/// connection of its own (a thread: the synchronous client), reconnecting
/// when it fails, handing parsed frames to the returned queue until
/// `shutdown`. The queue is bounded: a slow consumer holds the thread, and
/// PostgreSQL keeps the notifications meanwhile. After the connection
/// failed and came back it hands [`Listened::Resumed`]: what standbys
/// relayed meanwhile is lost.
pub fn listen(url: &str, name: &str, shutdown: CancellationToken) -> mpsc::Receiver<Listened> {
    let (tx, rx) = mpsc::channel(1024);
    let (url, name) = (url.to_owned(), format!("{name} relay"));
    let spawned = std::thread::Builder::new()
        .name("controller-relay".into())
        .spawn(move || {
            let mut conn = None;
            let mut failed = false;
            while !shutdown.is_cancelled() {
                let c = match conn.take() {
                    Some(c) => c,
                    None => match crate::store::sql::Conn::postgres_watchful(&url, &name)
                        .and_then(|c| c.execute_batch(&format!("LISTEN {CHANNEL}")).map(|()| c))
                    {
                        Ok(c) => {
                            if std::mem::take(&mut failed)
                                && tx.blocking_send(Listened::Resumed).is_err()
                            {
                                return;
                            }
                            c
                        }
                        Err(e) => {
                            failed = true;
                            tracing::warn!(error = %e, "listening for standbys' relays failed; retrying");
                            std::thread::sleep(Duration::from_secs(1));
                            continue;
                        }
                    },
                };
                match c.notifications(Duration::from_millis(250)) {
                    Ok(payloads) => {
                        for p in payloads {
                            match serde_json::from_str::<Vec<Relayed>>(&p) {
                                Ok(frames) => {
                                    if tx.blocking_send(Listened::Frames(frames)).is_err() {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "a relay notification that does not parse; ignored");
                                }
                            }
                        }
                        conn = Some(c);
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(error = %e, "the relay connection failed; listening again");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the relay listener");
    }
    rx
}

/// What the listener hands on.
#[derive(Debug)]
pub enum Listened {
    Frames(Vec<Relayed>),
    /// Listening again after the connection failed: frames were lost.
    Resumed,
}

/// The active controller applies standbys' frames as its own link would
/// have, until the queue closes. After frames were lost, the desk is
/// restored from the store (escalations a standby stored and relayed
/// meanwhile would else wait unrouted); nodes resend the rest.
pub async fn apply(link: Link, mut rx: mpsc::Receiver<Listened>) {
    while let Some(listened) = rx.recv().await {
        let frames = match listened {
            Listened::Frames(frames) => frames,
            Listened::Resumed => {
                match link.store.live_chats().await {
                    Ok(chats) => link.handoff.input(In::Restore { chats }).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "restoring live chats after lost relays failed")
                    }
                }
                continue;
            }
        };
        link.metrics.relay_received.inc_by(frames.len() as u64);
        let now = now_ms();
        let mut transitions = Vec::new();
        for frame in frames {
            match frame {
                Relayed::Send { node, down } => {
                    link.downlink.send(&node, down);
                }
                heard @ Relayed::Heard { .. } => {
                    if let Relayed::Heard {
                        node,
                        seal_key: Some(key),
                        ..
                    } = &heard
                    {
                        if let Err(e) = link.keys.announced(node, key).await {
                            tracing::warn!(%node, error = %e, "recording a relayed sealing key failed");
                        }
                    }
                    transitions.extend(presence(&mut link.presence.fleet(), now, heard));
                }
                Relayed::Desk { input, trace } => {
                    let input = input.into_input();
                    if matches!(input, In::VisitorTyping { .. }) {
                        if !link.handoff.try_input(input) {
                            link.metrics.handoff_dropped.inc();
                        }
                    } else {
                        link.handoff.input_traced(input, trace).await;
                    }
                }
            }
        }
        link.presence.record(transitions).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(node: &str, ids: usize) -> Relayed {
        Relayed::Send {
            node: node.into(),
            down: Down::EventsAck {
                ids: (0..ids).map(|i| format!("{i:036}")).collect(),
            },
        }
    }

    /// Frames travel in notifications PostgreSQL accepts, in order, none
    /// lost; one that cannot fit alone is handed back, not sent cut.
    #[test]
    fn frames_are_packed_in_order_into_payloads_postgres_accepts() {
        let frames: Vec<Relayed> = (0..300).map(|i| ack(&format!("n{i}"), 3)).collect();
        let (payloads, too_large) = pack(frames.clone());
        assert!(too_large.is_empty());
        assert!(payloads.len() > 1, "300 frames need several notifications");
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD, "{} bytes", p.len());
            back.extend(serde_json::from_str::<Vec<Relayed>>(p).unwrap());
        }
        assert_eq!(back, frames);
        let (payloads, too_large) = pack(vec![ack("a", 1), ack("big", 400), ack("b", 1)]);
        assert_eq!(too_large, vec![ack("big", 400)]);
        let back: Vec<Relayed> = serde_json::from_str(&payloads[0]).unwrap();
        assert_eq!(back, vec![ack("a", 1), ack("b", 1)]);
    }

    /// Every input node traffic causes crosses the wire and comes back the
    /// same; the console's never leave a standby.
    #[test]
    fn desk_inputs_survive_the_wire() {
        let inputs = vec![
            In::Escalated {
                chat: "c".into(),
                node: "n".into(),
                lang: "zh".into(),
                at: 5,
            },
            In::VisitorLine {
                chat: "c".into(),
                line: Line {
                    sender: "visitor".into(),
                    text: "我想转账".into(),
                    at: 6,
                    author: None,
                },
            },
            In::VisitorEnded { chat: "c".into() },
            In::Withdrawn {
                chat: "c".into(),
                reason: "visitor left".into(),
            },
            In::VisitorPresence {
                chat: "c".into(),
                present: false,
            },
            In::VisitorTyping {
                chat: "c".into(),
                node: "n".into(),
            },
        ];
        for input in inputs {
            let wire = DeskInput::from_input(input.clone()).expect("relayed");
            let json = serde_json::to_string(&wire).unwrap();
            let back: DeskInput = serde_json::from_str(&json).unwrap();
            assert_eq!(format!("{:?}", back.into_input()), format!("{input:?}"));
        }
        assert!(DeskInput::from_input(In::Tick).is_none());
    }
}
