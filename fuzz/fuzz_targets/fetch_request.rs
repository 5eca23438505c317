//! The QUIC model service's request line (parsed before any check).
#![no_main]
use edgedesk_common::sync::FetchRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<FetchRequest>(data) {
        let _ = req.signed_text();
    }
});
