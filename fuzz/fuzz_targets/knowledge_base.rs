//! The knowledge-base TOML a model bundle ships.
#![no_main]
use edgedesk_dialog::kb::KnowledgeBase;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = KnowledgeBase::parse(text, "fuzz");
    }
});
