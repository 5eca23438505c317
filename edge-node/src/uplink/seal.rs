//! Sealing what the node sends up: signed by the node's key, sealed for
//! the controller's, numbered, and published on the node's `up` topic.

use edgedesk_common::envelope::{
    CONTROLLER, Envelope, Header, Identity, PeerBox, SeqCounter, topic,
};
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
    /// The controller, with the sealing agreement made once.
    pub controller: PeerBox,
    pub seq: SeqCounter,
}

impl Sealer {
    fn next_seq(&self) -> u64 {
        self.seq.next()
    }

    pub fn seal(&self, body: &Up) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("OS random source");
        let id = uuid::Uuid::new_v4().to_string();
        let plain = serde_json::to_vec(body).unwrap_or_default();
        Envelope::seal_for(
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

    /// Seal and publish one message on our up topic.
    pub async fn send(&self, client: &AsyncClient, body: &Up) -> Result<(), rumqttc::ClientError> {
        client
            .publish(topic::up(&self.node), ENVELOPE_QOS, false, self.seal(body))
            .await
    }
}
