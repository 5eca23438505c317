//! The kiosk socket's frame decoder: any text a visitor's page can send.
#![no_main]
use edgedesk_common::chat::ClientFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ClientFrame::decode(text);
    }
});
