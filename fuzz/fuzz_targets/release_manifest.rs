//! Model update metadata: a signed release (checked with a real key), the
//! release it carries, and a bundle's manifest.
#![no_main]
use edgedesk_common::bundle::Manifest;
use edgedesk_common::release::{Release, SignedRelease};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = serde_json::from_slice::<SignedRelease>(data) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let _ = signed.verify(&key);
    }
    if let Ok(r) = serde_json::from_slice::<Release>(data) {
        let _ = r.check();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = Manifest::parse(text) {
            let _ = m.validate();
        }
    }
});
