//! EdgeDesk's shared vocabulary: what travels between the parts, never how.
//!
//! - [`chat`]: the kiosk WebSocket protocol (visitor ↔ edge node), versioned JSON.
//! - [`event`]: the events an edge node keeps in its outbox for the cloud.
//! - [`bundle`]: the model bundle manifest, read by nodes and (later) the controller.
//! - [`envelope`]: sealed, signed envelopes and the MQTT topic layout.
//! - [`sync`]: what travels inside envelopes, and the enrolment exchange.
//! - [`release`]: signed model releases (what nodes verify before a swap).
//! - [`branch`]: a branch's hours and facts (configuration, REST, commands).
//!
//! This crate has no runtime, no I/O and no networking code: each binary decides
//! what to do with these types.

pub mod branch;
pub mod bundle;
pub mod chat;
pub mod envelope;
pub mod event;
pub mod release;
pub mod sealing;
pub mod sync;
