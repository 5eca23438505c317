//! Sealing what the node sends up: signed by the node's key, sealed from an
//! ephemeral key for the controller's current sealing key, numbered, and
//! published on the node's `up` topic.

use std::sync::RwLock;

use edgedesk_common::envelope::{CONTROLLER, Envelope, Header, Identity, Peer, SeqCounter, topic};
use edgedesk_common::sealing::{Outgoing, Recipient};
use edgedesk_common::sync::Up;
use rumqttc::{AsyncClient, QoS};

use crate::session::now_ms;

/// Design: envelopes are published at QoS 0. Delivery is guaranteed end to
/// end by the controller's `events_ack` and our resends, not by the broker
/// (which keeps nothing); QoS 1 added PUBACKs that, with a broker that does
/// not set TCP_NODELAY, stalled each acknowledgement ~40 ms (Nagle + delayed ACK).
pub const ENVELOPE_QOS: QoS = QoS::AtMostOnce;

/// Sends sealed envelopes to the controller.
pub struct Sealer {
    pub node: String,
    pub identity: Identity,
    /// The controller's signing key (what it sends is checked against it).
    pub controller: Peer,
    /// The controller's current sealing key and our ephemeral key for it.
    to: RwLock<(Recipient, Outgoing)>,
    pub seq: SeqCounter,
}

fn ephemeral(to: &Recipient) -> Outgoing {
    let mut eph = [0u8; 32];
    getrandom::fill(&mut eph).expect("OS random source");
    Outgoing::new(to, eph, now_ms())
}

impl Sealer {
    pub fn new(node: String, identity: Identity, controller: Peer, seq: SeqCounter) -> Sealer {
        let to = controller.recipient().clone();
        let out = ephemeral(&to);
        Sealer {
            node,
            identity,
            controller,
            to: RwLock::new((to, out)),
            seq,
        }
    }

    /// Seal for `to` from now on (the controller announced a new key).
    pub fn set_controller_key(&self, to: Recipient) {
        let out = ephemeral(&to);
        *self.to.write().unwrap_or_else(|p| p.into_inner()) = (to, out);
    }

    /// The ephemeral key to seal with: a new one when it served its time.
    fn outgoing(&self) -> Outgoing {
        let now = now_ms();
        {
            let g = self.to.read().unwrap_or_else(|p| p.into_inner());
            if !g.1.stale(&g.0, now) {
                return g.1.clone();
            }
        }
        let mut g = self.to.write().unwrap_or_else(|p| p.into_inner());
        if g.1.stale(&g.0, now) {
            g.1 = ephemeral(&g.0);
        }
        g.1.clone()
    }

    pub fn seal(&self, body: &Up) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("OS random source");
        let id = uuid::Uuid::new_v4().to_string();
        let plain = serde_json::to_vec(body).unwrap_or_default();
        Envelope::seal(
            &self.identity,
            &self.outgoing(),
            Header {
                id: &id,
                from: &self.node,
                to: CONTROLLER,
                seq: self.seq.next(),
                ts: now_ms(),
            },
            nonce,
            &plain,
        )
        .to_json()
    }

    /// Seal and publish one message on our up topic.
    pub async fn send(&self, client: &AsyncClient, body: &Up) -> Result<(), rumqttc::ClientError> {
        client
            .publish(topic::up(&self.node), ENVELOPE_QOS, false, self.seal(body))
            .await
    }
}
