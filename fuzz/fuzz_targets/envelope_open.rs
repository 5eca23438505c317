//! What arrives over MQTT: envelope JSON, then opening it with a real key
//! pair, then the controller's messages to a node.
#![no_main]
use std::sync::LazyLock;

use edgedesk_common::envelope::{Envelope, Identity, PeerBox};
use edgedesk_common::sync::Down;
use libfuzzer_sys::fuzz_target;

static PEER: LazyLock<PeerBox> = LazyLock::new(|| {
    let me = Identity::from_secret(&[7; 64]);
    let them = Identity::from_secret(&[9; 64]);
    PeerBox::new(&me, them.public().parse().expect("keys parse"))
});

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_json(data) {
        let _ = env.open_from(&PEER);
    }
    let _ = Down::decode(data);
});
