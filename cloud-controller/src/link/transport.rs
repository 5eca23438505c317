//! MQTT for the controller: the event loop only parses and hands messages to
//! a bounded queue (policy: when full, drop the newest and count it — nodes
//! resend anything not acknowledged, so nothing is lost); the publisher seals
//! what [`Downlink`](crate::downlink::Downlink) hands it and publishes on the
//! node's `down` topic. Requests go through the client's queue, which the
//! event loop drains, so neither task ever waits on the other's socket.

use std::sync::Arc;
use std::time::Duration;

use edgedesk_common::envelope::{CONTROLLER, Envelope, Header, SeqCounter, topic};
use edgedesk_common::sync::Down;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Link;
use crate::downlink::{Outgoing, now_ms};

/// One inbound message, parsed just enough to route it.
pub struct Inbound {
    pub node: String,
    pub payload: Vec<u8>,
}

/// Capacity of the inbound queue.
pub const INBOUND_QUEUE: usize = 8192;

/// Small messages, latency-bound: no Nagle delay (for every MQTT client of ours).
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n.set_connection_timeout(10);
    n
}

/// The controller's MQTT client id: one fixed id for a single active
/// controller (its session survives a restart); with a shared subscription
/// (`shared` names this replica) one per replica, each with a clean session,
/// so a dead replica's session keeps no share of node traffic queued.
pub fn client_id(shared: Option<&str>) -> String {
    match shared {
        None => "edgedesk-controller".to_owned(),
        Some(replica) => {
            let safe: String = replica
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .take(64)
                .collect();
            format!("edgedesk-controller-{safe}")
        }
    }
}

/// What the controller subscribes to for node traffic: every node's `up`
/// topic, through the shared subscription `group` when there is one.
pub fn subscription(group: &str) -> String {
    if group.is_empty() {
        topic::ALL_UP.to_owned()
    } else {
        format!("$share/{group}/{}", topic::ALL_UP)
    }
}

/// MQTT options for the controller's own client (`shared`: this replica's
/// name when replicas share node traffic, see [`client_id`]).
pub fn mqtt_options(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    max_payload: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
    shared: Option<&str>,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id(shared), host, port);
    if let Some(t) = tls {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(t),
        ));
    }
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(shared.is_some());
    o.set_max_packet_size(max_payload, max_payload);
    o.set_inflight(200);
    o
}

/// Poll the MQTT event loop until `shutdown`, handing publishes to `inbound`.
pub async fn poll(
    link: Link,
    client: AsyncClient,
    mut eventloop: EventLoop,
    inbound: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("controller connected to the broker");
                let filter = subscription(&link.config.mqtt.shared_group);
                if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "subscribe failed");
                }
                if let Some(d) = &link.dynsec {
                    if let Err(e) = d.subscribe() {
                        tracing::error!(error = %e, "subscribing to the dynamic security answers failed");
                    }
                    // Off this loop: revoked nodes' accounts, deleted again.
                    d.sweep_later(link.store.clone());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p)))
                if p.topic == crate::broker::dynsec::RESPONSE =>
            {
                if let Some(d) = &link.dynsec {
                    d.answered(&p.payload);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(node) = topic::node_of_up(&p.topic) else {
                    link.metrics.refuse("topic");
                    continue;
                };
                let msg = Inbound {
                    node: node.to_owned(),
                    payload: p.payload.to_vec(),
                };
                if inbound.try_send(msg).is_err() {
                    link.metrics.inbound_dropped.inc();
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
    let _ = client.disconnect().await;
}

/// Seal and publish what the rest of the controller sends down, until the
/// queue closes.
pub async fn publish(
    link: Link,
    client: AsyncClient,
    seq: SeqCounter,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Send { node, down } => {
                if let Err(e) = send(&link, &client, &seq, &node, &down).await {
                    tracing::warn!(%node, error = %e, "sending to a node failed; what is queued goes again");
                }
            }
            Outgoing::Forget { node } => {
                // Credentials first: a key lookup racing this sees them gone.
                link.creds.remove(&node);
                // Off this loop: the broker's answer may take a while.
                if let Some(d) = &link.dynsec {
                    d.delete_later(&node);
                }
                link.keys.forget(&node);
                let t = link.presence.fleet().remove(&node);
                link.presence.record(t.into_iter().collect()).await;
            }
        }
    }
}

async fn send(
    link: &Link,
    client: &AsyncClient,
    seq: &SeqCounter,
    node: &str,
    body: &Down,
) -> Result<(), String> {
    // Unknown, revoked or unreadable keys: nothing to seal for.
    let Some(to) = link.keys.outgoing(node).await.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let plaintext = serde_json::to_vec(body).unwrap_or_default();
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).expect("OS random source");
    let id = uuid::Uuid::new_v4().to_string();
    let env = Envelope::seal(
        &link.identity,
        &to,
        Header {
            id: &id,
            from: CONTROLLER,
            to: node,
            // Strictly increasing, across restarts too (a block reserved in
            // the store at start), whatever the clock does.
            seq: seq.next(),
            ts: now_ms(),
        },
        nonce,
        &plaintext,
    );
    client
        // QoS 0: delivery is end to end (acks and resends); see the node
        // uplink's ENVELOPE_QOS for why not QoS 1.
        .publish(topic::down(node), QoS::AtMostOnce, false, env.to_json())
        .await
        .map_err(|e| e.to_string())
}
