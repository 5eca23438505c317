//! What arrives over MQTT: envelope JSON, then opening it with a real
//! signing key and keyring, then the controller's messages to a node.
#![no_main]
use std::sync::LazyLock;

use edgedesk_common::envelope::{Envelope, Identity, Peer};
use edgedesk_common::sealing::Keyring;
use edgedesk_common::sync::Down;
use libfuzzer_sys::fuzz_target;

static THEM: LazyLock<Peer> = LazyLock::new(|| {
    let them = Identity::from_secret(&[9; 64]);
    them.public().parse().expect("keys parse")
});
static RING: LazyLock<Keyring> = LazyLock::new(|| Keyring::new([7; 32], 0));

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_json(data) {
        let _ = env.open(&THEM, &RING);
        // Past a signature too: the keyring lookup and decryption.
        if let Ok(b) = RING.open_box(&env.rk, &env.epk) {
            let _ = env.decrypt(&b);
        }
    }
    let _ = Down::decode(data);
});
